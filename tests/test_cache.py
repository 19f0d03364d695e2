"""The user's cache: location, atomic entries, one build under concurrent runs, nothing left by a failure."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from embcompress.cache import CACHE_ENV, STAGING_PREFIX, cache_dir, cached_entry


def test_cache_dir_honours_the_env_var_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "embcompress"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "embcompress"


def _slow_build(log: str) -> None:
    def build(staging: Path) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        staging.mkdir()
        (staging / "part").write_text("half")
        time.sleep(1.0)  # the other run arrives while this one is still writing
        (staging / "done").write_text("yes")

    cached_entry(Path(log).parent / "entry", build, "test entry")


def test_concurrent_runs_build_an_entry_once_and_see_it_whole(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    context = multiprocessing.get_context("fork")
    runs = [context.Process(target=_slow_build, args=(log,)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    assert [run.exitcode for run in runs] == [0, 0]
    assert Path(log).read_text() == "built\n"
    assert (tmp_path / "entry" / "done").read_text() == "yes"
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))


def test_a_failed_build_leaves_no_entry_and_the_next_run_builds_it(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"

    def broken(staging: Path) -> None:
        staging.write_bytes(b"partial")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cached_entry(target, broken, "a file")
    assert not target.exists() and not list(tmp_path.glob(f"{STAGING_PREFIX}*"))
    (tmp_path / f"{STAGING_PREFIX}file.bin.dead").write_bytes(b"left by a killed run")
    assert cached_entry(target, lambda p: p.write_bytes(b"whole"), "a file").read_bytes() == b"whole"
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))
    assert cached_entry(target, lambda p: p.write_bytes(b"again"), "a file").read_bytes() == b"whole"
