"""Large vocabularies: the report computes logits a group of rows at a time, compares them a chunk of
positions at a time and spills the teacher's log-probabilities to a file; none of it changes a number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import embcompress
from embcompress.report import behaviour
from embcompress.report.builder import quantized_copy
from embcompress.report.evalset import EvalOptions, build_eval_set
from helpers.models import make_tiny
from helpers.report import make_tokenizer, tiny_folder, tiny_student, write_text


def _metrics(student: torch.nn.Module, teacher: torch.nn.Module, text: Path) -> tuple[dict, bool]:
    tokenizer = make_tokenizer(encoder=False)
    docs = text.read_text().split("\n\n")
    eval_set = build_eval_set("causal-lm", tokenizer, docs, EvalOptions(max_tokens=300, seq_len=32, batch_size=4))
    outputs = behaviour.teacher_outputs(teacher, eval_set)
    assert outputs.logp is not None
    summary = behaviour.compare(student, outputs)
    return summary, outputs.logp.spilled


def test_chunked_and_spilled_comparison_gives_the_same_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    teacher_dir = tiny_folder(tmp_path, "llama-tied")
    teacher = embcompress.load(tiny_student(tmp_path, teacher_dir, rank=8))  # any model with the same vocabulary
    student = embcompress.load(tiny_student(tmp_path, teacher_dir, rank=3))
    text = write_text(tmp_path / "text.txt")
    whole, spilled = _metrics(student, teacher, text)
    assert not spilled
    monkeypatch.setattr(behaviour, "MEMORY_CACHE_BYTES", 1024)  # every teacher log-probability goes to the file
    monkeypatch.setattr(behaviour, "LOGITS_BYTES", 32 * 96 * 4)  # one row of 32 positions at a time
    monkeypatch.setattr(behaviour, "COMPARE_BYTES", 7 * 96 * 4)  # compared 7 positions at a time
    chunked, spilled = _metrics(student, teacher, text)
    assert spilled
    for key in ("kl", "top1_agreement", "top5_agreement", "perplexity_ratio", "tokens"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key


def test_reference_copy_shares_everything_but_the_embedding() -> None:
    teacher = make_tiny("gemma3")
    reference = quantized_copy(teacher, "int4")
    shared = {id(p) for p in teacher.parameters()}
    own = [name for name, p in reference.named_parameters() if id(p) not in shared]
    assert own == ["model.embed_tokens.weight"]
    assert reference.lm_head.weight is reference.get_input_embeddings().weight  # still tied
    assert not torch.equal(reference.lm_head.weight, teacher.lm_head.weight)
