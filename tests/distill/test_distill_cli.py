"""``embcompress distill`` through the real Typer app: a working run and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import embcompress
from embcompress.cli import app
from helpers.distill import build_pair, make_tokenizer, single_thread, write_corpus

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
FAST = ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-every", "2", "--eval-windows", "4"]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    teacher, student = build_pair(tmp_path, "llama-tied")
    return teacher, student, write_corpus(tmp_path / "corpus.txt", 100)


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_distill_writes_a_loadable_checkpoint_and_json(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    teacher, student, corpus = pair
    code, out, err = run(
        "distill", student, "--teacher", teacher, "--data", corpus, "-o", tmp_path / "o", *FAST, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 3 and result["after"]["kl"] <= result["before"]["kl"]
    assert result["output"] == str(tmp_path / "o")
    model = embcompress.load(tmp_path / "o")
    assert type(model).__name__ == "LlamaForCausalLM"
    code, _, err = run("distill", student, "--teacher", teacher, "--data", corpus, "-o", tmp_path / "o", *FAST)
    assert code != 0 and "already exists" in err


def _assert_refused(code: int, err: str, needle: str, tmp_path: Path) -> None:
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.distill").exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    teacher, student, corpus = pair
    base = ["--teacher", teacher, "-o", tmp_path / "o"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    cases = [
        ((student, *base, "--data", corpus, "--steps", "0"), "--steps must be a positive integer"),
        ((teacher, *base, "--data", corpus, *FAST), "not an embcompress checkpoint"),
        ((student, *base, "--data", empty, *FAST), "holds no text"),
        ((student, *base, "--data", binary, *FAST), "binary"),
        ((student, *base, "--data", tmp_path / "missing.txt", *FAST), "does not exist"),
        ((student, *base, "--data", corpus, "--steps", "2", "--seq-len", "100"), "larger than the model's 64"),
        ((student, *base, "--data", corpus, "--steps", "2", "--train", "weights"), "--train must be one of"),
        ((student, *base, "--cache-teacher", tmp_path / "cache", *FAST), "needs --data"),
    ]
    for args, needle in cases:
        code, _, err = run("distill", *args)
        _assert_refused(code, err, needle, tmp_path)


def test_mismatched_teachers_are_refused(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    _, student, corpus = pair
    other_teacher, _ = build_pair(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, "bert-mlm")
    code, _, err = run("distill", student, "--teacher", other_teacher, "--data", corpus, "-o", tmp_path / "o", *FAST)
    _assert_refused(code, err, "student is a causal-lm model", tmp_path)

    wide = build_pair(tmp_path / "y" if (tmp_path / "y").mkdir() is None else tmp_path, "llama-tied")[0]
    tok = make_tokenizer("causal")
    tok.add_tokens(["zebra"])
    tok.save_pretrained(wide)
    code, _, err = run("distill", student, "--teacher", wide, "--data", corpus, "-o", tmp_path / "o", *FAST)
    _assert_refused(code, err, "tokenizer mismatch", tmp_path)

    config = json.loads((wide / "config.json").read_text())
    config["vocab_size"] = 128
    (wide / "config.json").write_text(json.dumps(config))
    code, _, err = run("distill", student, "--teacher", wide, "--data", corpus, "-o", tmp_path / "o", *FAST)
    assert code != 0 and not (tmp_path / "o").exists()
    assert "vocab_size" in err or "could not load" in err or "wrong shape" in err


def test_ctrl_c_resume_message_and_existing_checkpoints(tmp_path: Path, pair: tuple[Path, Path, Path]) -> None:
    teacher, student, corpus = pair
    (tmp_path / "o.distill" / "last").mkdir(parents=True)
    (tmp_path / "o.distill" / "last" / "state.json").write_text("{}")
    args = ("distill", student, "--teacher", teacher, "--data", corpus, "-o", tmp_path / "o", *FAST)
    code, _, err = run(*args)
    assert code != 0 and "--resume" in err and not (tmp_path / "o").exists()
    code, _, err = run(*args, "--overwrite")
    assert code == 0, err
    assert (tmp_path / "o" / "distill_log.jsonl").is_file()


def test_int8_students_are_refused_with_a_hint(tmp_path: Path) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied", factor_dtype="int8")
    corpus = write_corpus(tmp_path / "corpus.txt", 50)
    code, _, err = run("distill", student, "--teacher", teacher, "--data", corpus, "-o", tmp_path / "o", *FAST)
    _assert_refused(code, err, "int8", tmp_path)
    assert "--factor-dtype float32" in err
