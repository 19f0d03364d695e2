"""Loss terms, LR schedule and batch plumbing on small tensors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from embcompress.distill import DistillConfig, LossWeights, losses
from embcompress.distill.batches import CorpusBatches, RandomTokenBatches
from embcompress.distill.trainer import lr_factor, mask_tokens
from embcompress.errors import EmbcompressError
from helpers.distill import make_tokenizer, single_thread, write_corpus

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5)
    assert losses.kl_logits(logits, logits, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.kl_logits(logits + torch.randn_like(logits), logits, mask, 2.0).item() > 0.01


def test_topk_kl_with_full_k_equals_full_kl() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    values, indices = t.topk(9, dim=-1)
    full = losses.kl_logits(s, t, mask, 2.0)
    assert losses.kl_topk(s, values, indices, mask, 2.0).item() == pytest.approx(full.item(), rel=1e-5)


def test_masked_positions_do_not_count() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    s2 = s.clone()
    s2[0, 2] += 100.0
    mask = torch.tensor([[1, 1, 0]])
    assert losses.kl_logits(s, t, mask, 1.0).item() == pytest.approx(losses.kl_logits(s2, t, mask, 1.0).item())


def test_pooled_cosine_and_hidden_distances() -> None:
    torch.manual_seed(0)
    h = torch.randn(3, 6, 8)
    mask = torch.ones(3, 6)
    assert torch.allclose(losses.pooled_cosine(h, h, mask), torch.ones(3), atol=1e-6)
    assert losses.hidden_distance(h, h, mask, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert losses.hidden_distance(2 * h, h, mask, "mse").item() == pytest.approx(1.0, rel=1e-5)
    assert losses.reconstruction(h, h).item() == 0.0


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    values = [lr_factor(p / 100, 0.1, 0.1, 0.01) for p in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] == pytest.approx(0.1)
    assert math.isclose(lr_factor(0.55, 0.1, 0.0, 0.01), 0.5, rel_tol=1e-9)


def test_mask_tokens_is_seeded_and_skips_special_and_padding() -> None:
    ids = torch.arange(2, 42).reshape(2, 20)
    attention = torch.ones_like(ids)
    attention[1, 15:] = 0
    special = torch.tensor([2])
    a, chosen = mask_tokens(ids, attention, 99, 0.5, seed=7, special=special)
    b, _ = mask_tokens(ids, attention, 99, 0.5, seed=7, special=special)
    assert torch.equal(a, b) and chosen.any()
    assert not chosen[0, 0] and not chosen[1, 15:].any()
    assert torch.equal(a[chosen], torch.full((int(chosen.sum()),), 99))


def test_corpus_batches_shard_between_processes_and_skip_exactly(tmp_path) -> None:
    corpus = write_corpus(tmp_path / "c.txt", 120)
    tok = make_tokenizer("causal")
    cfg = DistillConfig(batch_size=2, seq_len=8)
    r0 = CorpusBatches(corpus, tok, cfg, per_document=False, rank=0, world=2)
    r1 = CorpusBatches(corpus, tok, cfg, per_document=False, rank=1, world=2)
    it0, it1 = r0.iterate(), r1.iterate()
    first0, first1 = [next(it0) for _ in range(5)], [next(it1) for _ in range(5)]
    assert not any(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first0, first1, strict=True))
    skipped = next(r0.iterate(skip=3))
    assert torch.equal(skipped.input_ids, first0[3].input_ids)
    heldout, split = r0.heldout(4)
    assert split == "heldout" and sum(b.input_ids.shape[0] for b in heldout) == 4


def test_corpus_too_small_for_one_batch_is_a_clear_error(tmp_path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the cat sees a dog .\n")
    batches = CorpusBatches(corpus, make_tokenizer("causal"), DistillConfig(batch_size=8, seq_len=64), False)
    with pytest.raises(EmbcompressError, match="too small"):
        next(batches.iterate())


def test_random_token_batches_follow_the_special_token_framing() -> None:
    tok = make_tokenizer("encoder")
    source = RandomTokenBatches(tok, 96, DistillConfig(batch_size=4, seq_len=12))
    batch = next(source.iterate())
    assert (batch.input_ids[:, 0] == tok.cls_token_id).all()
    lengths = batch.attention_mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert batch.input_ids[row, n - 1] == tok.sep_token_id
        assert not torch.isin(batch.input_ids[row, 1 : n - 1], torch.tensor(tok.all_special_ids)).any()
    assert torch.equal(next(source.iterate()).input_ids, batch.input_ids)


def test_config_round_trip_and_validation() -> None:
    cfg = DistillConfig(steps=5, weights=LossWeights(kl=0.5), hidden_layers=(1, -1))
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert DistillConfig().with_default_budget().max_minutes == 30.0
    assert cfg.weights.resolved("encoder")["kl"] == 0.5
    cfg.validate()  # explicit validation still runs (construction ran it already)
    for bad, message in (
        ({"steps": 0}, "--steps must be a positive integer, got 0"),
        ({"train": "everything"}, "--train must be one of"),
        ({"seq_len": 2}, "--seq-len must be at least 4, got 2"),
        ({"weights": LossWeights(kl=0.5), "heldout_fraction": 1.0}, r"--heldout-fraction must be in \(0, 1\)"),
    ):
        with pytest.raises(EmbcompressError, match=message):
            DistillConfig(**bad)
    with pytest.raises(EmbcompressError, match="loss weights must be >= 0"):
        LossWeights(kl=-1.0)
    with pytest.raises(EmbcompressError, match=r"unknown DistillConfig field\(s\) stepz; allowed: steps"):
        DistillConfig.from_dict({"stepz": 3})
    assert DistillConfig.from_dict({"weights": {"kl": 0.25}}).weights == LossWeights(kl=0.25)
