"""The report's verdict reads every metric it shows, on real tiny reports: never a win on one metric while
another says the opposite."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import embcompress
from embcompress.report import EvalOptions, ReportOptions, build_report, to_markdown
from embcompress.report.builder import glance_section
from embcompress.report.tables import BEHAVIOUR_KEYS, glance_table
from embcompress.report.verdict import BEHAVIOUR_METRICS, DIGITS, NOT_COMPARED
from embcompress.sources import ModelSource, load_model, load_tokenizer
from helpers.report import tiny_folder, tiny_student, write_text

OPTIONS = ReportOptions(eval=EvalOptions(max_docs=12, seq_len=16, batch_size=4), speed=False)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Real reports of a tiny encoder and a tiny causal LM factorized at rank 3, with and without text."""
    tmp = tmp_path_factory.mktemp("verdict")
    out = {}
    for arch in ("bert-encoder", "llama-tied"):
        teacher_dir = tiny_folder(tmp, arch)
        student = embcompress.load(tiny_student(tmp, teacher_dir, rank=3))
        source = ModelSource(str(teacher_dir), "local", teacher_dir)
        teacher, tok = load_model(source), load_tokenizer(source)
        text = write_text(tmp / "eval.txt")
        out[arch] = build_report(student, teacher, tok, text, OPTIONS)
        out[f"{arch}-bare"] = build_report(student, teacher, tok, None, OPTIONS)
    return out


def _shown(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")


def _expected(report: dict[str, Any], name: str) -> dict[str, list[str]]:
    """Better / worse / tied metrics of the student against reference ``name``, read from the glance rows."""
    rows = {row["name"]: row["values"] for row in report["glance"]["rows"]}
    out: dict[str, list[str]] = {"better": [], "worse": [], "tied": []}
    for metric in report["glance"]["metrics"]:
        s, r = _shown(rows["student"][metric["name"]]), _shown(rows[name][metric["name"]])
        key = "tied" if s == r else "better" if (s > r) == metric["higher_is_better"] else "worse"
        out[key].append(metric["name"])
    return out


@pytest.mark.parametrize("name", ["bert-encoder", "llama-tied", "bert-encoder-bare", "llama-tied-bare"])
def test_each_comparison_covers_every_shown_metric_and_the_headline_follows_it(
    reports: dict[str, dict[str, Any]], name: str
) -> None:
    report = reports[name]
    glance = report["glance"]
    shown = [m["name"] for m in glance["metrics"]]
    if name.endswith("bare"):
        assert shown[0] == "relative_error" and "row_cosine_mean" in shown
    else:
        assert shown == [key for key, _ in BEHAVIOUR_METRICS[report["task"]]]
    assert [c["reference"] for c in glance["comparisons"]] == ["int8", "q8_0", "q4_0", "nf4", "int4"]
    for comparison in glance["comparisons"]:
        expected = _expected(report, comparison["reference"])
        assert {k: comparison[k] for k in expected} == expected
        if comparison["outcome"] == "mixed":
            assert f"against {comparison['reference']} quantization" in glance["verdict"]
        if comparison["outcome"] in ("better", "tied") and comparison["bytes"] != "fewer":
            assert "beats" not in glance["verdict"] or comparison["reference"] in glance["verdict"]
    table = glance_table(report)
    assert table.header[3:-1] == [f"{m['name']} {'↑' if m['higher_is_better'] else '↓'}" for m in glance["metrics"]]
    assert table.caption == glance["verdict"] and table.rows[-1][-1] == glance["comparisons"][-1]["summary"]


def test_a_win_on_cosine_with_a_loss_on_overlap_is_reported_as_mixed(reports: dict[str, dict[str, Any]]) -> None:
    """The README's main job: fewer bytes than int4, cosine above it, neighbour overlap below it (0.883 vs 0.887)."""
    report = copy.deepcopy(reports["bert-encoder"])
    report["behaviour"].update(
        pooled_cosine=0.9977, neighbour_overlap=0.883, hidden_cosine=0.99, pooled_cosine_min=0.98
    )
    student_bytes = report["size"]["embedding"]["bytes_after"]
    for ref in report["references"]:  # every reference but int4 is bigger and better on everything
        bigger = ref["name"] != "int4"
        ref["embedding_bytes"] = student_bytes * 2 if bigger else student_bytes + 1
        good = {"pooled_cosine": 0.9999, "neighbour_overlap": 0.99, "hidden_cosine": 0.999, "pooled_cosine_min": 0.99}
        ref["behaviour"].update(good if bigger else {**good, "pooled_cosine": 0.9911, "neighbour_overlap": 0.887})
    glance = glance_section(report)
    verdict = glance["verdict"]
    assert "beats" not in verdict
    assert (
        "against int4 quantization (at more bytes) the compressed model is better on pooled_cosine but worse on "
        "neighbour_overlap" in verdict
    )
    assert "int8 and q8_0 and q4_0 and nf4 quantization is better on every metric at more bytes" in verdict
    int4 = next(c for c in glance["comparisons"] if c["reference"] == "int4")
    assert (
        int4["outcome"] == "mixed"
        and int4["summary"] == "better on pooled_cosine; worse on neighbour_overlap, hidden_cosine, pooled_cosine_min"
    )


def test_better_on_all_and_worse_on_all(reports: dict[str, dict[str, Any]]) -> None:
    report = copy.deepcopy(reports["llama-tied"])
    student_bytes = report["size"]["embedding"]["bytes_after"]
    beh = report["behaviour"]
    for ref in report["references"]:
        ref["embedding_bytes"] = student_bytes * 2  # every reference is bigger
        ref["behaviour"].update(
            kl=beh["kl"] * 2 + 0.1,
            perplexity_ratio=beh["perplexity_ratio"] * 2,
            top1_agreement=beh["top1_agreement"] / 2,
            top5_agreement=beh["top5_agreement"] / 2,
        )
    glance = glance_section(report)
    assert glance["verdict"] == (
        "the compressed model beats int8 and q8_0 and q4_0 and nf4 and int4 quantization on every metric at equal "
        "or fewer bytes"
    )
    assert {c["summary"] for c in glance["comparisons"]} == {"better on all 4"}
    int4 = report["references"][-1]
    int4["embedding_bytes"] = student_bytes // 2
    int4["behaviour"].update(kl=0.0, perplexity_ratio=1.0, top1_agreement=1.0, top5_agreement=1.0)
    glance = glance_section(report)
    assert glance["verdict"].startswith(
        "int4 quantization is at least as good on every metric at no more bytes: the compression did not pay off; "
    )
    assert glance["comparisons"][-1]["summary"] == "worse on all 4"


def test_every_behaviour_metric_shown_is_compared_or_named_as_not_compared() -> None:
    for task, keys in BEHAVIOUR_KEYS.items():
        compared = {key for key, _ in BEHAVIOUR_METRICS[task]}
        assert set(keys) <= compared | NOT_COMPARED, task
        assert compared <= set(keys), task


def test_the_markdown_shows_the_comparison_column(reports: dict[str, dict[str, Any]]) -> None:
    text = to_markdown(reports["bert-encoder"])
    assert "compressed model vs this" in text and "neighbour_overlap ↑" in text
    assert f"**{reports['bert-encoder']['glance']['verdict']}**" in text
