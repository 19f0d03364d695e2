"""``embcompress compress`` through the real Typer app: a working run (rich and JSON) and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import embcompress
from embcompress.cli import app
from helpers.distill import KINDS, make_teacher, make_tokenizer, write_corpus


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    make_teacher("llama-tied").save_pretrained(folder)
    make_tokenizer(KINDS["llama-tied"]).save_pretrained(folder)
    return folder


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_compress_prints_the_report_with_int8_int4_rows(tmp_path: Path, teacher: Path) -> None:
    torch.set_num_threads(1)
    corpus = write_corpus(tmp_path / "corpus.txt", 150)
    code, out, err = run(
        "compress", teacher, "--ratio", "2", "--domain", "--data", corpus, "--max-minutes", "0.02", "-o", tmp_path / "o"
    )
    assert code == 0, err
    assert "(tokens by frequency)" in out and "int4" in out and "q4_0" in out and "wrote" in out
    assert "warning: domain mode" in out
    assert embcompress.load(tmp_path / "o") is not None
    code, _, err = run("compress", teacher, "--ratio", "2", "--no-distill", "-o", tmp_path / "o")
    assert code != 0 and "already exists" in err


def test_compress_json_is_machine_readable(tmp_path: Path, teacher: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", 150)
    code, out, err = run(
        "compress", teacher, "--ratio", "2", "--data", corpus, "--no-distill", "--json", "-o", tmp_path / "o"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["output"] == str(tmp_path / "o")
    assert result["report"]["glance"]["metric"] == "kl"
    assert result["mode"] == "robust" and result["layout"].startswith("transform code:")
    assert result["embedding_bytes"] == result["report"]["size"]["embedding"]["bytes_after"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--ratio", "0.5"], "--ratio must be above 1"),
        (["--ratio", "50", "--domain"], "--ratio 50 leaves 122 bytes for a 96x16 embedding, below its smallest code"),
        (["--ratio", "50"], "below its smallest code (604 bytes); use --ratio 10.1 or lower"),
        (["--data", "/no/such/text"], "/no/such/text"),
        (["--domain", "--dense-rows", "10", "--tail-rank", "99"], "--tail-rank must be between 1 and 16, got 99"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, teacher: Path, extra: list[str], needle: str) -> None:
    before = sorted(p.name for p in teacher.iterdir())
    code, _, err = run("compress", teacher, "--no-distill", "-o", tmp_path / "o", *extra)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if ".work-" in p.name]
    assert sorted(p.name for p in teacher.iterdir()) == before
