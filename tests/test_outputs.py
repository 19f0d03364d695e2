"""The output guard on a real file system with real processes: overlap, existing outputs, the atomic
commit (with and without ``renameat2``), concurrent writers and dead writers' leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embcompress import outputs
from embcompress.outputs import OutputError, atomic_output, check_output, protected_paths, reserve_output
from helpers.guarantees import leftovers, tree_hashes


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "f.txt").write_text(text)
    return path


@pytest.mark.parametrize("where", ["same", "inside", "parent", "via symlink"])
def test_an_output_overlapping_an_input_is_refused(tmp_path: Path, where: str) -> None:
    model = _folder(tmp_path / "in" / "model", "weights")
    (tmp_path / "link").symlink_to(model)
    out = {"same": model, "inside": model / "x", "parent": model.parent, "via symlink": tmp_path / "link" / "x"}[where]
    with pytest.raises(OutputError, match=f"output '{out}' overlaps the input '{model}'"):
        check_output(out, overwrite=True, inputs=[model])
    with pytest.raises(OutputError, match="overlaps the input"), atomic_output(out, overwrite=True, inputs=[model]):
        pass
    assert (model / "f.txt").read_text() == "weights" and leftovers(model.parent, tmp_path) == []


def test_a_file_input_protects_the_file_not_its_folder(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    check_output(tmp_path / "out", inputs=[gguf])  # a sibling is fine
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output(tmp_path, overwrite=True, inputs=[gguf])


def test_a_hub_snapshot_protects_its_blobs_and_repository(tmp_path: Path) -> None:
    repo = tmp_path / "models--a--b"
    snapshot = _folder(repo / "blobs", "x").parent / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/f.txt")
    assert set(protected_paths(snapshot)) >= {snapshot, repo / "blobs", repo}


def test_an_existing_output_needs_overwrite_and_is_then_replaced_whole(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", "old")
    with pytest.raises(OutputError, match=f"output '{out}' already exists; pass --overwrite"), atomic_output(out):
        pass
    with atomic_output(out, overwrite=True) as tmp:
        (tmp / "g.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["g.txt"] and leftovers(tmp_path) == []


def test_a_file_output_is_committed_whole(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    with atomic_output(page, kind="file", label="--html") as tmp:
        tmp.write_text("<html>")
    assert page.read_text() == "<html>"
    with (
        pytest.raises(OutputError, match=r"--html .* already exists"),
        atomic_output(page, kind="file", label="--html"),
    ):
        pass
    with pytest.raises(OutputError, match="is a folder; pass a file name"):
        check_output(tmp_path, overwrite=True, kind="file", label="--html")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False])
def test_an_output_created_meanwhile_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)  # the portable path: same rule under the lock
    out = tmp_path / "out"
    refused = pytest.raises(OutputError, match="was created by another process while this run was working")
    with refused, atomic_output(out) as tmp:
        (tmp / "mine.txt").write_text("mine")
        subprocess.run(["sh", "-c", f"mkdir '{out}' && echo theirs > '{out}/theirs.txt'"], check=True)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False])
def test_overwrite_replaces_an_output_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    if not renameat2:
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)
    out = tmp_path / "out"
    with atomic_output(out, overwrite=True) as tmp:
        (tmp / "mine.txt").write_text("mine")
        _folder(out, "theirs")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and leftovers(tmp_path) == []


HOLD = """
import sys, time
from pathlib import Path
from embcompress.outputs import reserve_output
with reserve_output(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_fails_at_once_and_a_dead_writers_lock_is_free(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        stale = _folder(tmp_path / ".out.tmp-0123abcd", "a live run's")
        with pytest.raises(OutputError, match=f"being written by another embcompress run \\(process {holder.pid} "):
            check_output(out, overwrite=True)
        with pytest.raises(OutputError, match="being written by another"), reserve_output(out, overwrite=True):
            pass
        assert (stale / "f.txt").exists()  # never removed while its owner lives
    finally:
        holder.kill()
        holder.wait()
    with reserve_output(out):  # the kernel dropped the dead holder's lock
        assert not stale.exists()  # and what it left is removed
    assert leftovers(tmp_path) == []


def test_stale_copies_of_other_outputs_are_left_alone(tmp_path: Path) -> None:
    others = [_folder(tmp_path / name, "x") for name in (".outx.tmp-0123abcd", ".out.tmp-0123abcd.tmp-89abcdef")]
    with atomic_output(tmp_path / "out") as tmp:
        (tmp / "f").write_text("y")
    assert all(p.exists() for p in others)


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = tree_hashes(tmp_path)
    refused = pytest.raises(OutputError, match=f"cannot write output '{out}': Read-only file system; .* nothing was")
    with refused, atomic_output(out):
        raise OSError(30, os.strerror(30))
    assert not out.exists() and tree_hashes(tmp_path) == before and leftovers(tmp_path) == []


def test_reservations_nest_within_a_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with reserve_output(out), reserve_output(out), atomic_output(out) as tmp:
        (tmp / "f").write_text("z")
    assert (out / "f").read_text() == "z" and leftovers(tmp_path) == []
