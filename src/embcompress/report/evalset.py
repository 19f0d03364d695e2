"""Evaluation batches built once from the user's text, reused for the student and every reference."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import chunked, packed_windows, pad_rows, token_stream
from ..errors import EmbcompressError
from ..options import Options

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions(Options):
    """How much text to evaluate on and how to batch it (validated at construction).

    Attributes:
        max_tokens: Causal LM: tokens scored (packed windows of ``seq_len``).
        max_docs: Masked LM / encoder: documents (paragraphs) encoded, each truncated to ``seq_len``.
        seq_len: Window length (causal) or truncation length (masked / encoder).
        batch_size: Sequences per forward pass.
        mask_prob: Masked LM: share of (non-special) tokens masked.
        neighbours: Encoder: neighbours compared per document (top-k overlap).
        seed: Seed of the masking.
    """

    max_tokens: int = 4096
    max_docs: int = 1000
    seq_len: int = 128
    batch_size: int = 8
    mask_prob: float = 0.15
    neighbours: int = 10
    seed: int = 0

    def validate(self) -> None:
        self.require_positive("max_tokens", "max_docs", "seq_len", "batch_size", "neighbours")
        self.require_fraction("mask_prob")


@dataclass
class EvalSet:
    """Batches of one task: ``input_ids`` and ``attention_mask`` (and ``labels`` for masked LM)."""

    task: str
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def n_sequences(self) -> int:
        return sum(int(b["input_ids"].shape[0]) for b in self.batches)

    @property
    def n_tokens(self) -> int:
        return sum(int(b["attention_mask"].sum()) for b in self.batches)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "sequences": self.n_sequences, "tokens": self.n_tokens}


def _batched(rows: Iterable[torch.Tensor], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    padded = (pad_rows(chunk, pad_id) for chunk in chunked(rows, batch_size))
    return [{"input_ids": ids, "attention_mask": mask} for ids, mask in padded]


def causal_eval_set(tokenizer: Any, documents: Iterable[str], options: EvalOptions) -> EvalSet:
    """Consecutive windows of ``seq_len`` tokens (documents joined by EOS), up to ``max_tokens``."""
    tokens = list(itertools.islice(token_stream(tokenizer, documents), options.max_tokens))
    if len(tokens) < 2:
        raise EmbcompressError("the evaluation text holds fewer than 2 tokens; pass a longer --data text")
    rows = packed_windows(tokens, min(options.seq_len, len(tokens)))
    return EvalSet("causal-lm", _batched(rows, options.batch_size, 0))


def encoder_eval_set(tokenizer: Any, documents: Iterable[str], options: EvalOptions) -> EvalSet:
    """One sequence per document (special tokens added, truncated to ``seq_len``)."""
    docs = list(itertools.islice((d for d in documents if d.strip()), options.max_docs))
    if not docs:
        raise EmbcompressError("the evaluation text is empty (no documents); pass a --data file with text")
    encoded = tokenizer(docs, truncation=True, max_length=options.seq_len)["input_ids"]
    rows = [torch.tensor(ids, dtype=torch.long) for ids in encoded if len(ids) > 0]
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
    return EvalSet("encoder", _batched(rows, options.batch_size, pad_id))


def masked_eval_set(tokenizer: Any, documents: Iterable[str], options: EvalOptions) -> EvalSet:
    """Documents with ``mask_prob`` of their non-special tokens replaced by the mask token (at least one)."""
    if tokenizer.mask_token_id is None:
        raise EmbcompressError("the tokenizer has no mask token; cannot evaluate a masked LM")
    special = torch.tensor(tokenizer.all_special_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(options.seed)
    batches = encoder_eval_set(tokenizer, documents, options).batches
    for batch in batches:
        ids = batch["input_ids"]
        maskable = batch["attention_mask"].bool() & ~torch.isin(ids, special)
        chosen = (torch.rand(ids.shape, generator=gen) < options.mask_prob) & maskable
        for row in range(ids.shape[0]):
            if not bool(chosen[row].any()) and bool(maskable[row].any()):
                chosen[row, int(maskable[row].nonzero()[0])] = True
        batch["labels"] = torch.where(chosen, ids, torch.full_like(ids, -100))
        batch["input_ids"] = torch.where(chosen, torch.full_like(ids, tokenizer.mask_token_id), ids)
    return EvalSet("masked-lm", batches)


def build_eval_set(task: str, tokenizer: Any, documents: Iterable[str], options: EvalOptions) -> EvalSet:
    """The evaluation batches for ``task``."""
    builders = {"causal-lm": causal_eval_set, "masked-lm": masked_eval_set, "encoder": encoder_eval_set}
    eval_set = builders[task](tokenizer, documents, options)
    if not eval_set.batches:
        raise EmbcompressError("the evaluation text produced no batches; pass a longer --data text")
    logger.info("evaluation set: %s", eval_set.describe())
    return eval_set
