"""Text a causal LM writes itself: evaluation and calibration text that needs nothing from the user.

``embcompress compress`` measures an out-of-domain column on it when no ``--ood-data`` is given, and
estimates the second moment of the hidden states an LM head sees from it, so the compression does
not depend on knowing the serving text.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import transformers
from torch import nn

from .sentence import pipeline_of, sentence_embedding

logger = logging.getLogger(__name__)


def _start_id(tokenizer: Any) -> int:
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return next((int(i) for i in ids if i is not None), 0)


@torch.no_grad()
def sample_ids(
    model: nn.Module, tokenizer: Any, documents: int = 32, tokens: int = 128, seed: int = 0, batch_size: int = 32
) -> torch.Tensor:
    """``documents x (tokens + 1)`` ids sampled from ``model`` (nucleus 0.95, temperature 1) after a
    start token; reproducible for a seed (the global RNG is restored afterwards). Decoding is bound by
    reading the weights once per step, so a whole batch of documents costs about what one does."""
    start = _start_id(tokenizer)
    config = transformers.GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=0,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        pad_token_id=start,
        eos_token_id=None,
    )
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for first in range(0, documents, batch_size):
            n = min(batch_size, documents - first)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
            out.append(model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config).cpu())
    logger.info("sampled %d documents of %d tokens from the model", documents, tokens)
    return torch.cat(out)


def sample_documents(
    model: nn.Module, tokenizer: Any, documents: int = 32, tokens: int = 128, seed: int = 0
) -> list[str]:
    """:func:`sample_ids` decoded to text, one document per sample (blank lines squeezed out)."""
    ids = sample_ids(model, tokenizer, documents, tokens, seed)
    texts = tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True)
    return [" ".join(text.split()) for text in texts if text.strip()]


class _HeadReached(Exception):
    """Raised by :func:`head_input_moment`'s hook: the forward pass stops before the LM head's product."""


@torch.no_grad()
def head_input_moment(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``E[h h^T]`` (``H x H``, float64) of the hidden states entering the LM head over ``ids``, captured
    by a hook on ``get_output_embeddings()`` (so any final norm the architecture applies is included); the
    head itself is never run (for a 128256-token vocabulary its logits would cost more than the rest)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head")
    moment = torch.zeros(head.in_features, head.in_features, dtype=torch.float64)
    count = 0

    def capture(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        nonlocal moment, count
        hidden = args[0].reshape(-1, args[0].shape[-1]).double().cpu()
        moment += hidden.T @ hidden
        count += hidden.shape[0]
        raise _HeadReached

    handle = head.register_forward_pre_hook(capture)
    try:
        device = next(model.parameters()).device
        for first in range(0, ids.shape[0], batch_size):
            with contextlib.suppress(_HeadReached):
                model(input_ids=ids[first : first + batch_size].to(device))
    finally:
        handle.remove()
    return moment / max(count, 1)


def random_ids(tokenizer: Any, vocab_size: int, documents: int = 64, tokens: int = 126, seed: int = 0) -> torch.Tensor:
    """``documents x (tokens + 2)`` ids: uniformly random non-special tokens framed by the tokenizer's
    ``[CLS]``/``[SEP]`` (or bos/eos), for models that cannot write text (encoders)."""
    special = set(tokenizer.all_special_ids) if tokenizer is not None else set()
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    body = allowed[torch.randint(0, len(allowed), (documents, tokens), generator=gen)]
    first = getattr(tokenizer, "cls_token_id", None) or getattr(tokenizer, "bos_token_id", None)
    last = getattr(tokenizer, "sep_token_id", None) or getattr(tokenizer, "eos_token_id", None)
    parts = [torch.full((documents, 1), t) for t in (first,) if t is not None]
    parts += [body] + [torch.full((documents, 1), t) for t in (last,) if t is not None]
    return torch.cat(parts, 1)


def pooled_sensitivity(model: nn.Module, ids: torch.Tensor, probes: int = 4, batch_size: int = 16) -> torch.Tensor:
    """``E[J^T J]`` (``H x H``, float64) of ``J`` = d(normalised sentence embedding: mean-pooled output, or
    the model's sentence-transformers pipeline) / d(input embedding of a token), Hutchinson-estimated with
    ``probes`` random directions: the error metric of an encoder's embedding, since
    ``|pooled error|^2 ~ tr(M Sigma_err)`` and ``1 - cos ~ |pooled error|^2 / 2``."""
    emb = model.get_input_embeddings()
    hidden = emb.weight.shape[1]
    pipeline = pipeline_of(model)
    total = torch.zeros(hidden, hidden, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    count = 0
    for first in range(0, ids.shape[0], batch_size):
        batch = ids[first : first + batch_size].to(emb.weight.device)
        for _ in range(probes):
            x = emb(batch).detach().requires_grad_(True)
            out = model(inputs_embeds=x)
            states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
            pooled = torch.nn.functional.normalize(sentence_embedding(pipeline, states, mask), dim=-1)
            probe = (pooled * torch.randn(pooled.shape, generator=gen).to(pooled)).sum()
            grads = torch.autograd.grad(probe, x)[0].reshape(-1, hidden).double().cpu()  # parameters' .grad untouched
            total += grads.T @ grads
        count += batch.shape[0] * probes
    return total / max(count, 1)
