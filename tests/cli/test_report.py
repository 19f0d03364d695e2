"""``embcompress report`` through the real CLI on tiny models: formats, HTML, and bad inputs failing cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from embcompress.cli import app
from embcompress.report import SCHEMA_VERSION
from helpers.report import make_tokenizer, tiny_folder, tiny_student, write_text

FAST = ["--max-tokens", "128", "--max-docs", "8", "--seq-len", "16", "--batch-size", "4", "--no-speed"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli-report")
    teacher = tiny_folder(tmp, "llama-tied")
    return {"tmp": tmp, "teacher": teacher, "student": tiny_student(tmp, teacher, rank=4),
            "text": write_text(tmp / "eval.txt")}  # fmt: skip


def _error_line(result: Result) -> str:
    assert result.exit_code != 0
    # stderr may carry a progress line for a stage that started; the error itself is one line, last
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, result.output
    return lines[-1]


def test_json_report(pair: dict[str, Path]) -> None:
    result = invoke("report", str(pair["student"]), "--teacher", str(pair["teacher"]), "--data", str(pair["text"]),
                    "--format", "json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema_version"] == SCHEMA_VERSION and report["task"] == "causal-lm"
    assert report["behaviour"]["perplexity_ratio"] > 0 and report["speed"] is None
    assert report["size"]["embedding"]["bytes_after"] == (96 + 16) * 4 * 4


def test_rich_and_markdown_and_html(pair: dict[str, Path]) -> None:
    html = pair["tmp"] / "report.html"
    result = invoke("report", str(pair["student"]), "--data", str(pair["text"]), "--html", str(html), *FAST)
    assert result.exit_code == 0, result.output
    assert "At a glance" in result.stdout and "kl ↓" in result.stdout  # teacher from embcompress.json
    assert html.read_text().count("<svg") >= 2
    result = invoke("report", str(pair["student"]), "--teacher", str(pair["teacher"]), "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert "### Size" in result.stdout and "Not measured (pass --data TEXT)" in result.stdout


def test_dense_model_folder_as_student(pair: dict[str, Path]) -> None:
    result = invoke("report", str(pair["teacher"]), "--teacher", str(pair["teacher"]), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["provenance"]["compressed"] is False and "method" not in report["provenance"]
    assert report["fidelity"]["input"]["relative_error"] == 0.0


def test_empty_text_is_one_line_error(pair: dict[str, Path]) -> None:
    empty = pair["tmp"] / "empty.txt"
    empty.write_text("\n\n  \n")
    line = _error_line(invoke("report", str(pair["student"]), "--data", str(empty), *FAST))
    assert "no text" in line and "empty.txt" in line


def test_unwritable_html_is_one_line_error(pair: dict[str, Path]) -> None:
    line = _error_line(invoke("report", str(pair["student"]), "--html", str(pair["tmp"] / "missing" / "r.html")))
    assert "cannot write --html" in line
    (pair["tmp"] / "pages").mkdir(exist_ok=True)
    line = _error_line(invoke("report", str(pair["student"]), "--html", str(pair["tmp"] / "pages")))
    assert "is a folder" in line


def test_mismatched_vocabulary_is_refused(pair: dict[str, Path]) -> None:
    other = tiny_folder(pair["tmp"], "llama-tied", seed=1)
    make_tokenizer(encoder=False, reverse=True).save_pretrained(other)  # same size, other token ids
    line = _error_line(invoke("report", str(pair["student"]), "--teacher", str(other)))
    assert "tokenizers differ" in line


def test_bad_format_is_refused(pair: dict[str, Path]) -> None:
    assert "unknown --format" in _error_line(invoke("report", str(pair["student"]), "--format", "xml"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-docs", "0"], "--max-docs must be a positive integer, got 0"),
        (["--repeats", "0"], "--speed-repeats must be a positive integer, got 0"),
        (["--threads", "-1"], "--speed-threads must be a positive integer, got -1"),
    ],
)
def test_bad_evaluation_sizes_are_one_line_errors(pair: dict[str, Path], args: list[str], message: str) -> None:
    assert message in _error_line(invoke("report", str(pair["student"]), *args))
