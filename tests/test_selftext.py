"""Text sampled from the model itself, and the second moment of what its LM head sees."""

from __future__ import annotations

import torch

from embcompress.selftext import head_input_moment, pooled_sensitivity, random_ids, sample_documents, sample_ids
from helpers.distill import make_tokenizer
from helpers.models import forward_logits, make_tiny


def test_sampling_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    model, tok = make_tiny("llama-tied"), make_tokenizer("causal")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = sample_ids(model, tok, documents=5, tokens=12, seed=1, batch_size=2)
    after = torch.rand(1)
    assert first.shape == (5, 13) and torch.equal(before, after)
    assert torch.equal(first, sample_ids(model, tok, documents=5, tokens=12, seed=1, batch_size=2))
    assert not torch.equal(first, sample_ids(model, tok, documents=5, tokens=12, seed=2, batch_size=2))
    assert all(isinstance(d, str) for d in sample_documents(model, tok, documents=3, tokens=10))


def test_head_moment_is_the_second_moment_of_the_head_input() -> None:
    model = make_tiny("llama-untied")
    ids = torch.randint(3, 90, (3, 7))
    moment = head_input_moment(model, ids, batch_size=2)
    hidden = model.model(input_ids=ids).last_hidden_state.reshape(-1, 16).double()
    assert torch.allclose(moment, hidden.T @ hidden / hidden.shape[0], atol=1e-9)
    assert torch.allclose(forward_logits(model, ids), model(input_ids=ids).logits)  # hooks were removed
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_random_ids_are_framed_non_special_tokens() -> None:
    tok = make_tokenizer("encoder")
    ids = random_ids(tok, 96, documents=4, tokens=10, seed=3)
    assert ids.shape == (4, 12) and torch.equal(ids, random_ids(tok, 96, documents=4, tokens=10, seed=3))
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    assert not set(ids[:, 1:-1].flatten().tolist()) & set(tok.all_special_ids)


def test_pooled_sensitivity_is_a_psd_metric_of_the_encoder() -> None:
    model = make_tiny("bert-encoder")
    ids = random_ids(make_tokenizer("encoder"), 96, documents=6, tokens=8)
    metric = pooled_sensitivity(model, ids, probes=2, batch_size=4)
    assert metric.shape == (16, 16) and torch.allclose(metric, metric.T)
    assert torch.linalg.eigvalsh(metric).min() > -1e-12 and metric.trace() > 0
    assert all(p.grad is None for p in model.parameters())
