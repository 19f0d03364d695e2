"""Text sampled from the model itself, and the second moment of what its LM head sees."""

from __future__ import annotations

import torch

from embcompress.selftext import head_input_moment, sample_documents, sample_ids
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
