"""Shared settings for the method tests: fast options per method and a frequency-like weight vector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from embcompress.methods import get_method
from helpers.models import VOCAB

#: Every registered method with options that keep the tiny fits fast.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "svd": {},
    "weighted-svd": {},
    "grouped": {"buckets": [12, "rest"]},
    "nmf": {"max_iter": 30},
    "nonlinear": {"steps": 10, "batch_rows": 0},
    "transform": {},
}
WEIGHTED = {"weighted-svd", "grouped", "nonlinear"}


def budget(method: str, rank: int) -> dict[str, Any]:
    """FactorizeOptions budget fields for ``method`` growing with ``rank`` (byte-budget methods get
    ``6 + rank`` bits per weight: the rotation, scales and codebooks of the tiny 96 x 16 matrices take
    about 4, and 8 bits a component is the most a code stores)."""
    if get_method(method).byte_budget:
        return {"ratio": 32 / (6 + rank)}
    return {"rank": rank}


def compact_dtype(method: str) -> str:
    """The method's compact factor storage: int8 factors, or float16 scales and codebooks for ``transform``."""
    return "float16" if get_method(method).byte_budget else "int8"


def zipf_weights(vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """Zipf-like token counts over a shuffled vocabulary, the shape real frequencies have."""
    gen = torch.Generator().manual_seed(seed)
    counts = 1000.0 / torch.arange(1, vocab + 1, dtype=torch.float32)
    return counts[torch.randperm(vocab, generator=gen)]


def weights_for(method: str) -> torch.Tensor | None:
    """Row weights to pass to ``method`` (``None`` for methods that take none)."""
    return zipf_weights() if method in WEIGHTED else None


def single_thread() -> Iterator[None]:
    """Run with one torch thread: the tiny fits are op-bound and 2 threads on a shared machine mostly spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
