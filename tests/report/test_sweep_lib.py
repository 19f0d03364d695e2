"""Sweep over methods x budgets on a tiny model: one evaluation reused, Pareto front, quantization points."""

from __future__ import annotations

from pathlib import Path

import pytest

from embcompress.errors import EmbcompressError
from embcompress.methods import method_names
from embcompress.report import EvalOptions, ReportOptions, SweepGrid, prepare_evaluation, run_sweep, sweep_html
from embcompress.report.sweep import pareto_front
from embcompress.sources import ModelSource, load_model, load_tokenizer
from helpers.report import tiny_folder, write_text

OPTIONS = ReportOptions(eval=EvalOptions(max_tokens=128, seq_len=16, batch_size=4))


@pytest.fixture(scope="module")
def sweep_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep")
    folder = tiny_folder(tmp, "llama-tied")
    source = ModelSource(str(folder), "local", folder)
    teacher, tok = load_model(source), load_tokenizer(source)
    evaluation = prepare_evaluation(teacher, tok, write_text(tmp / "eval.txt"), OPTIONS)
    calls: list[bool] = []
    # deep copies keep the hook: it records whether the caller was the teacher itself or a copy
    handle = teacher.register_forward_hook(lambda module, args, out: calls.append(module is teacher))
    grid = SweepGrid(methods=("svd", "no-such-method"), ranks=(2, 4, 8), energies=(0.5,), ratios=(4.0,))
    result = run_sweep(teacher, grid, evaluation, OPTIONS, teacher_name="tiny")
    handle.remove()
    return {"result": result, "calls": calls, "batches": len(evaluation.teacher.per_batch)}


def test_grid_points_and_references(sweep_result: dict) -> None:
    result = sweep_result["result"]
    labels = [p["label"] for p in result["points"]]
    assert labels == ["r=2", "r=4", "r=8", "energy=0.5", "ratio=4x"]
    assert result["skipped_methods"] == ["no-such-method"]
    by_rank = {p["rank"]: p for p in result["points"]}
    assert by_rank[2]["embedding_bytes"] == (96 + 16) * 2 * 4
    assert by_rank[2]["relative_error"] > by_rank[8]["relative_error"]
    assert result["points"][-1]["rank"] == 96 * 16 // (4 * (96 + 16))
    assert [r["method"] for r in result["references"]] == ["int8", "q8_0", "q4_0", "nf4", "int4"]
    assert result["metric"] == "kl" and result["higher_is_better"] is False


def test_teacher_outputs_are_reused(sweep_result: dict) -> None:
    calls = sweep_result["calls"]
    assert not any(calls)  # the teacher itself never ran again during the sweep
    assert len(calls) == (5 + 5) * sweep_result["batches"]  # one pass per grid point and per reference copy


def test_pareto_front_marks_non_dominated_points(sweep_result: dict) -> None:
    points = sweep_result["result"]["points"] + sweep_result["result"]["references"]
    front = [p for p in points if p["pareto"]]
    assert front
    for p in front:
        assert not any(
            q["embedding_bytes"] < p["embedding_bytes"] and q["value"] < p["value"] for q in points if q["value"]
        )


def test_pareto_front_on_known_points() -> None:
    pts = [
        {"embedding_bytes": 10, "value": 2.0},
        {"embedding_bytes": 20, "value": 1.5},
        {"embedding_bytes": 30, "value": 1.8},  # dominated by the 20-byte point
        {"embedding_bytes": 5, "value": None},
    ]
    pareto_front(pts, higher_is_better=False)
    assert [p["pareto"] for p in pts] == [True, True, False, False]


def test_sweep_html_has_pareto_plot_with_quantization_points(sweep_result: dict) -> None:
    page = sweep_html(sweep_result["result"])
    assert page.count("<svg") == 1
    for text in ("Pareto front", "per-row quantization", "int8", "int4", "Quality vs size"):
        assert text in page


def test_unknown_methods_only_is_an_error(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path, "llama-tied")
    teacher = load_model(ModelSource(str(folder), "local", folder))
    evaluation = prepare_evaluation(teacher, None, None, OPTIONS)
    with pytest.raises(EmbcompressError, match="none of the methods"):
        run_sweep(teacher, SweepGrid(methods=("nope",), ranks=(2,)), evaluation)
    assert "svd" in method_names()
