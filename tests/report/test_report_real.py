"""Reports on the real checkpoints (MiniLM, SmolLM2): the reference numbers' shape, end to end. Slow."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import embcompress
from embcompress.data import iter_documents, split_documents
from embcompress.factorize import FactorizeOptions, factorize_checkpoint
from embcompress.report import EvalOptions, ReportOptions, build_report, to_html
from embcompress.sizes import quantized_nbytes
from embcompress.sources import LoadOptions, load_source
from helpers.models import PYDOCS, requires_minilm, requires_pydocs, requires_smollm2

pytestmark = [pytest.mark.slow, requires_pydocs]


def heldout_text(path: Path, docs: int) -> Path:
    chosen = itertools.islice(split_documents(iter_documents(PYDOCS), "heldout"), docs)
    path.write_text("\n\n".join(chosen) + "\n")
    return path


def _report(alias: str, rank: int, tmp: Path, options: ReportOptions) -> dict:
    student_dir = tmp / f"{alias}-r{rank}"
    factorize_checkpoint(alias, student_dir, FactorizeOptions(rank=rank))
    _, teacher, tok = load_source(alias, LoadOptions())
    student = embcompress.load(student_dir)
    text = heldout_text(tmp / "eval.txt", 200)
    return build_report(student, teacher, tok, text, options, student_dir=student_dir, teacher_name=alias)


@requires_minilm
def test_minilm_r64_report(tmp_path: Path) -> None:
    options = ReportOptions(eval=EvalOptions(max_docs=200, batch_size=16), speed_repeats=2)
    report = _report("minilm", 64, tmp_path, options)
    beh, refs = report["behaviour"], {r["name"]: r for r in report["references"]}
    int8, int4 = refs["int8"], refs["int4"]
    assert report["size"]["embedding"]["bytes_before"] == 30522 * 384 * 4
    assert int8["embedding_bytes"] == quantized_nbytes(30522, 384, 8)
    assert int8["behaviour"]["pooled_cosine"] > 0.999 and int4["behaviour"]["pooled_cosine"] > 0.97
    assert 0.2 < beh["pooled_cosine"] < 0.7  # reference: 0.43 for plain SVD r=64
    assert beh["neighbour_overlap"] < int4["behaviour"]["neighbour_overlap"]
    assert "int4" in report["glance"]["verdict"].split(" quantization")[0]  # int4 is smaller and better than r=64
    assert report["glance"]["verdict"].split(";")[0].endswith("did not pay off")
    assert {c["outcome"] for c in report["glance"]["comparisons"]} == {"worse"}  # on every metric, every reference
    assert "<svg" in to_html(report)


@requires_smollm2
def test_smollm2_r128_report(tmp_path: Path) -> None:
    options = ReportOptions(eval=EvalOptions(max_tokens=512, batch_size=4), speed_repeats=1)
    report = _report("smollm2", 128, tmp_path, options)
    beh, refs = report["behaviour"], {r["name"]: r for r in report["references"]}
    int8, int4 = refs["int8"], refs["int4"]
    assert report["size"]["modules"][1]["tied"] and report["size"]["embedding"]["bytes_before"] == 49152 * 576 * 4
    assert beh["perplexity_ratio"] > 50  # reference: ~3000 for tied SVD r=128 without distillation
    assert int8["behaviour"]["perplexity_ratio"] < 1.05 and int4["behaviour"]["perplexity_ratio"] < 3
    assert int8["behaviour"]["kl"] < int4["behaviour"]["kl"] < beh["kl"]
    assert report["speed"]["lm_head"]["ratio"] > 0
