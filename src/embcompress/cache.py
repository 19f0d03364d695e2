"""The user's cache: assembled packaged GGUF files and de-quantized copies of GGUF checkpoints.

Location: ``$EMBCOMPRESS_CACHE``, else ``$XDG_CACHE_HOME/embcompress``, else ``~/.cache/embcompress``
(never inside site-packages). Every entry is built under a temporary name beside its final one and
renamed into place, while holding an exclusive ``flock`` on ``.<name>.lock``: a second run wanting the
same entry waits for the first and then reuses its result; a run killed midway leaves only a temporary
name, removed by the next run that takes the lock. An entry that exists is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import EmbcompressError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: entries are still renamed into place atomically
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Environment variable naming the cache folder.
CACHE_ENV = "EMBCOMPRESS_CACHE"
#: Bumped when the layout of a de-quantized entry changes (older entries are then ignored).
DEQUANTIZED_FORMAT = "v1"
#: Prefix of temporary (staging) names inside the cache.
STAGING_PREFIX = ".staging-"


def cache_dir() -> Path:
    """The cache folder (not created): ``$EMBCOMPRESS_CACHE``, ``$XDG_CACHE_HOME/embcompress`` or
    ``~/.cache/embcompress``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "embcompress"


def _make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbcompressError(
            f"cannot create the cache folder '{path}' ({exc.strerror}); set {CACHE_ENV} to a writable folder"
        ) from None
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _entry_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``target``; waits (logging once) while another run holds it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = target.parent / f".{target.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another embcompress run building %s", target)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock; the lock file stays (unlinking it would race a waiter)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_staging(target: Path) -> None:
    """Staging copies of ``target`` left by dead runs (call only while holding its lock)."""
    for entry in target.parent.glob(f"{STAGING_PREFIX}{target.name}.*"):
        _remove(entry)


def cached_entry(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """``target`` inside the cache, built once by ``build(staging_path)`` and renamed into place atomically.

    ``build`` writes a file or a folder at the path it is given. Concurrent runs build it once: the others
    wait for the lock and find it done.
    """
    if target.exists():
        return target
    _make_dir(target.parent)
    with _entry_lock(target):
        if target.exists():  # built by the run we waited for
            return target
        _remove_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{target.name}.", dir=target.parent))
        staging.rmdir()  # ``build`` creates a file or a folder here
        started = time.perf_counter()
        try:
            build(staging)
            os.replace(staging, target)
        except BaseException:
            _remove(staging)
            raise
        logger.info("cached %s in %s (%.1f s)", what, target, time.perf_counter() - started)
    return target
