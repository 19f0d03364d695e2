"""Large vocabularies: distillation computes the KL from the LM heads' inputs a chunk of positions at a time,
with the same values and gradients as from whole logits, and the whole run gives the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from embcompress.cli import app
from embcompress.distill import losses, model_utils, trainer
from helpers.distill import build_pair, single_thread, write_corpus
from helpers.models import make_tiny

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
FAST = ["--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-every", "1", "--eval-windows", "4", "--json"]


def test_chunked_kl_matches_whole_logits_with_gradients() -> None:
    student, teacher = make_tiny("gemma3", 0), make_tiny("gemma3", 1)
    split_s, split_t = model_utils.head_split(student, "causal-lm"), model_utils.head_split(teacher, "causal-lm")
    assert split_s is not None and split_t is not None
    ids, mask = torch.randint(0, 96, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    whole = losses.kl_logits(
        student(input_ids=ids, attention_mask=mask).logits, teacher(input_ids=ids).logits, mask, 2.0
    )
    (grad_whole,) = torch.autograd.grad(whole, student.lm_head.weight)
    hs = model_utils.forward_split(split_s, ids, mask, (), False).head_input
    with torch.no_grad():
        ht = model_utils.forward_split(split_t, ids, mask, (), False).head_input
    heads = [lambda h, s=s: model_utils.head_logits(s, h) for s in (split_s, split_t)]
    chunked = losses.kl_chunked(hs, ht, heads[0], heads[1], mask, 2.0, chunk=5)
    (grad_chunked,) = torch.autograd.grad(chunked, student.lm_head.weight)
    assert float(chunked.detach()) == pytest.approx(float(whole.detach()), rel=1e-5)
    torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-4, atol=1e-7)


def _distill(root: Path, teacher: Path, student: Path, corpus: Path, name: str) -> dict:
    result = CliRunner().invoke(
        app, ["distill", str(student), "--teacher", str(teacher), "--data", str(corpus), "-o", str(root / name), *FAST]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_distillation_through_the_split_heads_gives_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher, student = build_pair(tmp_path, "gemma3")
    corpus = write_corpus(tmp_path / "corpus.txt", 100)
    whole = _distill(tmp_path, teacher, student, corpus, "whole")
    monkeypatch.setattr(trainer, "LOGITS_BYTES", 16 * 96 * 4 - 1)  # a batch of 2 x 16 positions is "large"
    split = _distill(tmp_path, teacher, student, corpus, "split")
    for key in ("before", "after"):
        assert split[key]["kl"] == pytest.approx(whole[key]["kl"], rel=1e-4), key
        assert split[key]["ppl_ratio"] == pytest.approx(whole[key]["ppl_ratio"], rel=1e-4), key
