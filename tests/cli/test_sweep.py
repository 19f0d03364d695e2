"""``embcompress sweep`` through the real CLI on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from embcompress.cli import app
from helpers.report import tiny_folder, write_text

FAST = ["--max-tokens", "128", "--seq-len", "16", "--batch-size", "4"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli-sweep")
    return {"tmp": tmp, "model": tiny_folder(tmp, "llama-untied"), "text": write_text(tmp / "eval.txt")}


def test_sweep_json_html_and_saved_points(setup: dict[str, Path]) -> None:
    html, saved = setup["tmp"] / "sweep.html", setup["tmp"] / "points"
    result = invoke("sweep", str(setup["model"]), "--methods", "svd,not-a-method", "--ranks", "2,4", "--data",
                    str(setup["text"]), "--html", str(html), "--json", "--save-dir", str(saved), *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert [p["label"] for p in sweep["points"]] == ["r=2", "r=4"]
    assert sweep["skipped_methods"] == ["not-a-method"]
    assert any(p["pareto"] for p in sweep["points"] + sweep["references"])
    assert "Pareto front" in html.read_text() and "int4" in html.read_text()
    assert sorted(p.name for p in saved.iterdir()) == ["svd-r2", "svd-r4"]
    assert (saved / "svd-r2" / "model.safetensors").is_file()


def test_sweep_without_text_uses_matrix_error(setup: dict[str, Path]) -> None:
    result = invoke("sweep", str(setup["model"]), "--ratios", "4", "--energies", "0.5", "--json")
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert sweep["metric"] == "relative_error" and len(sweep["points"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nope", "--ranks", "2"], "none of the methods"),
        (["--ranks", "a,b"], "comma-separated numbers"),
        (["--energies", "1.5"], "between 0 and 1"),
        ([], "no budget given"),
        (["--ranks", "0"], "--ranks values must be positive"),
        (["--ranks", "2", "--targets", "middle"], "unknown target(s) middle"),
        (["--ranks", "2", "--max-docs", "0"], "--max-docs must be a positive integer, got 0"),
    ],
)
def test_bad_grid_is_one_line_error(setup: dict[str, Path], args: list[str], message: str) -> None:
    result = invoke("sweep", str(setup["model"]), *args)
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1
