"""The one guard for everything embcompress writes (checkpoints, exports, reports, sweep pages).

Every output goes through :func:`atomic_output` (folders) or :func:`atomic_output` with
``kind="file"`` (single files such as ``--html``), which

1. **checks before any work** (:func:`check_output`): the output is not, does not contain and does
   not lie inside any input of the command (model folders, packaged models, hub cache folders, data);
   an existing output is refused without ``overwrite``; the parent folder exists and is writable;
2. **reserves the output** for the whole run with an exclusive ``flock`` on ``.<name>.lock`` beside
   it: a second writer of the same output fails at once with one line naming the owner. The kernel
   drops the lock when its process dies (even by SIGKILL), so a lock never goes stale; holding it
   also proves that every ``.<name>.tmp-XXXXXXXX`` / ``.<name>.old-XXXXXXXX`` left beside the output
   belongs to a dead run, and those are removed;
3. **stages** into a hidden ``.<name>.tmp-XXXXXXXX`` beside the output and **commits** with one
   rename: ``renameat2(RENAME_NOREPLACE)`` without ``overwrite`` (the rename fails instead of
   replacing an output that appeared meanwhile), ``renameat2(RENAME_EXCHANGE)`` with it (readers see
   the old or the new output, never a mix); where the kernel or file system lacks ``renameat2`` the
   same rules are kept under the lock with ``os.rename``;
4. turns a failed write (full disk, quota, read-only file system) into one line, after removing the
   staging copy: nothing is left behind.

See ``docs/guarantees.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from .errors import EmbcompressError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

KINDS = ("folder", "file")
_TMP_TAG = re.compile(r"\.(tmp|old)-[0-9a-f]{8}")
_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
#: Locks this process holds: resolved output path -> (file descriptor, nesting depth).
_HELD: dict[str, list[int]] = {}


class OutputError(EmbcompressError):
    """An output that may not be written (overlaps an input, exists, is locked, or the write failed)."""


# -- checks ------------------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _overlaps(out: Path, protected: Path) -> bool:
    return out == protected or protected in out.parents or out in protected.parents


def check_outside(out: Path, inputs: Iterable[Path], label: str = "output", kind: str = "folder") -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (symbolic links followed)."""
    resolved = {_absolute(out), _absolute(out).resolve()}
    for item in inputs:
        for protected in protected_paths(item):
            if any(_overlaps(o, protected) for o in resolved):
                shown = f"'{item}'" if _absolute(item) == protected else f"'{item}' (at {protected})"
                what = "an output folder" if kind == "folder" else "a file"
                raise OutputError(f"{label} '{out}' overlaps the input {shown}; choose {what} outside the input")


def protected_paths(item: Path) -> list[Path]:
    """What an input puts off limits: the path (resolved), the targets of the symbolic links a folder
    holds (a hub snapshot's blobs) and a hub snapshot's repository folder."""
    path = _absolute(item)
    found = [path, path.resolve()]
    real = path.resolve()
    if real.is_dir():
        with contextlib.suppress(OSError):
            found += [entry.resolve().parent for entry in real.iterdir() if entry.is_symlink()]
        if real.parent.name == "snapshots":
            found.append(real.parent.parent)
    return list(dict.fromkeys(found))


def check_output(
    out: str | os.PathLike[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    kind: str = "folder",
    label: str = "output",
) -> None:
    """Every check that needs no work: overlap with ``inputs``, an existing output without
    ``overwrite``, an output of the wrong kind, a missing or unwritable parent, another live writer."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(out)
    check_outside(path, [Path(p) for p in inputs], label, kind)
    if path.is_symlink():
        raise OutputError(f"{label} '{out}' is a symbolic link; pass the path it points to, or another path")
    if path.exists() and path.is_dir() != (kind == "folder"):
        what, wanted = ("a file", "a folder") if kind == "folder" else ("a folder", "a file name such as report.html")
        raise OutputError(f"{label} '{out}' is {what}; pass {wanted}")
    if path.exists() and not overwrite:
        raise OutputError(f"{label} '{out}' already exists; pass --overwrite to replace it, or choose another path")
    _check_parent(path, label)
    owner = _live_owner(path)
    if owner is not None:
        raise OutputError(_busy_message(path, owner, label))


def _check_parent(path: Path, label: str) -> None:
    parent = _absolute(path).parent
    what = f"'{path}'" if label == "output" else f"{label} '{path}'"
    if not parent.is_dir():
        raise OutputError(f"cannot write {what}: parent folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK) or not _can_create(parent):
        raise OutputError(f"cannot write {what}: parent folder '{parent}' is not writable")


def _can_create(parent: Path) -> bool:
    """Whether a folder can be created in ``parent`` (``os.access`` says yes to root even on a read-only mount)."""
    probe = parent / f".embcompress-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


# -- the reservation lock ------------------------------------------------------------------------------


def _lock_path(path: Path) -> Path:
    absolute = _absolute(path)
    return absolute.parent / f".{absolute.name}.lock"


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_owner(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_message(path: Path, owner: dict[str, Any], label: str) -> str:
    who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
    return f"{label} '{path}' is being written by another embcompress run ({who}); wait for it or choose another path"


def _try_lock(lock: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``lock``, or ``None`` when a live process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder unlinked it between our open and flock: take the new file


def _live_owner(path: Path) -> dict[str, Any] | None:
    """The owner record of a live run holding ``path``'s lock (``None``: free, or held by this process)."""
    lock = _lock_path(path)
    if fcntl is None or str(_absolute(path)) in _HELD or not lock.exists():
        return None
    fd = _try_lock(lock)
    if fd is not None:
        os.close(fd)
        return None
    return _read_owner(lock)


@contextlib.contextmanager
def reserve_output(
    out: str | os.PathLike[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    kind: str = "folder",
    label: str = "output",
) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`) and hold its lock until the block ends; stale staging
    copies of dead runs are removed. Re-entrant within a process (a nested reservation is free)."""
    path = Path(out)
    key = str(_absolute(path))
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    check_output(path, overwrite, inputs, kind, label)
    fd = _acquire(path, label)
    _HELD[key] = [fd, 1]
    try:
        remove_stale(path)
        yield path
    finally:
        del _HELD[key]
        _release(path, fd)


def _acquire(path: Path, label: str) -> int:
    if fcntl is None:  # pragma: no cover - no flock: the rename rules still hold, concurrency is unchecked
        return -1
    lock = _lock_path(path)
    fd = _try_lock(lock)
    if fd is None:
        raise OutputError(_busy_message(path, _read_owner(lock), label))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_owner_record()).encode())
    return fd


def _release(path: Path, fd: int) -> None:
    if fd < 0:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        os.unlink(_lock_path(path))
    os.close(fd)


def remove_stale(path: Path) -> list[Path]:
    """Remove ``.<name>.tmp-XXXXXXXX`` / ``.<name>.old-XXXXXXXX`` beside ``path``; only call while holding
    its lock (every live writer of ``path`` holds it while its staging copy exists, so these are dead runs')."""
    absolute = _absolute(path)
    pattern = re.compile(re.escape(f".{absolute.name}") + _TMP_TAG.pattern)
    removed = []
    for entry in absolute.parent.iterdir():
        if pattern.fullmatch(entry.name):
            _remove(entry)
            removed.append(entry)
    return removed


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


# -- staging and the atomic commit ---------------------------------------------------------------------


def _sibling(path: Path, tag: str) -> Path:
    absolute = _absolute(path)
    return absolute.parent / f".{absolute.name}.{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_output(
    out: str | os.PathLike[str],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    kind: str = "folder",
    label: str = "output",
) -> Iterator[Path]:
    """Yield a hidden staging folder (``kind="folder"``) or file path (``kind="file"``) beside ``out``
    that becomes ``out`` only if the block succeeds (see the module docstring)."""
    path = Path(out)
    with reserve_output(path, overwrite, inputs, kind, label):
        tmp = _sibling(path, "tmp")
        if kind == "folder":
            tmp.mkdir()
        try:
            yield tmp
            _commit(tmp, path, overwrite, label)
        except (OSError, SafetensorError) as exc:
            _remove(tmp)
            raise OutputError(write_failure(path, exc, label)) from None
        except BaseException:
            _remove(tmp)
            raise


def write_failure(path: Path, exc: BaseException, label: str = "output") -> str:
    """One line for a failed write: the reason, the free space left, and that nothing was written."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
    code = re.search(r"\(os error (\d+)\)", reason)  # safetensors wraps the OS error in its own message
    reason = os.strerror(int(code.group(1))) if code else reason
    try:
        free = f"; {shutil.disk_usage(_absolute(path).parent).free / 1e6:.1f} MB free there"
    except OSError:
        free = ""
    return f"cannot write {label} '{path}': {reason}{free}; nothing was written (free space or choose another path)"


def _commit(tmp: Path, path: Path, overwrite: bool, label: str) -> None:
    """Move ``tmp`` onto ``path`` in one rename; never replace an output that appeared unless ``overwrite``."""
    if not os.path.lexists(path):
        try:
            _rename(tmp, path, _RENAME_NOREPLACE)
            return
        except FileExistsError:
            pass  # appeared between the check and the rename
    if not overwrite:
        raise OutputError(
            f"{label} '{path}' was created by another process while this run was working; it was not "
            "replaced and nothing was written (pass --overwrite to replace it)"
        )
    try:
        _rename(tmp, path, _RENAME_EXCHANGE)
        _remove(tmp)  # now holds the previous output
    except _Unsupported:
        trash = _sibling(path, "old")
        os.rename(path, trash)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(trash, path)  # put the previous output back
            raise
        _remove(trash)


class _Unsupported(Exception):
    """``renameat2`` (or the flag) is not available for this file system."""


def _renameat2() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _renameat2()


def _rename(src: Path, dst: Path, flag: int) -> None:
    """``renameat2(src, dst, flag)``; without it, the same rule under the caller's lock with ``os.rename``."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flag) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(dst))
    if flag == _RENAME_EXCHANGE:
        raise _Unsupported
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
