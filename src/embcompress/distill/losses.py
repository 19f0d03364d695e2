"""Loss terms of embedding distillation. Every term returns a scalar averaged over real tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..sentence import SentencePipeline


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, L) over positions where ``mask`` is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` per position, averaged over ``mask``."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_pos = (t.exp() * (t - s)).sum(-1)
    return _masked_mean(per_pos, mask) * temperature**2


def _kl_sum(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    s = F.log_softmax(student_head(student_hidden).float() / temperature, dim=-1)
    with torch.no_grad():
        t = F.log_softmax(teacher_head(teacher_hidden).float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum()


def kl_chunked(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor,
    temperature: float,
    chunk: int,
) -> torch.Tensor:
    """:func:`kl_logits` from the two heads' inputs, ``chunk`` positions at a time: each chunk's logits are
    recomputed in the backward pass (activation checkpointing), so one chunk's logits live at a time."""
    keep = mask.bool()
    hs, ht = student_hidden[keep], teacher_hidden[keep]
    total = hs.new_zeros((), dtype=torch.float32)
    for start in range(0, hs.shape[0], chunk):
        args = (hs[start : start + chunk], ht[start : start + chunk], student_head, teacher_head, temperature)
        part = checkpoint(_kl_sum, *args, use_reentrant=False) if torch.is_grad_enabled() else _kl_sum(*args)
        total = total + part
    return total / max(hs.shape[0], 1) * temperature**2


def kl_topk(
    student: torch.Tensor,
    top_values: torch.Tensor,
    top_indices: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """KL against a cached top-k teacher: teacher probabilities renormalised over its top k,
    student log-probabilities normalised over the full vocabulary."""
    s = F.log_softmax(student.float() / temperature, dim=-1).gather(-1, top_indices.long())
    t = F.log_softmax(top_values.float() / temperature, dim=-1)
    per_pos = (t.exp() * (t - s)).sum(-1)
    return _masked_mean(per_pos, mask) * temperature**2


def hidden_distance(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """``1 - cos`` or MSE (normalised by the teacher's mean square) between hidden states."""
    if kind == "cosine":
        per_pos = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
        return _masked_mean(per_pos, mask)
    diff = (student.float() - teacher.float()).pow(2).mean(-1)
    scale = _masked_mean(teacher.float().pow(2).mean(-1), mask).clamp_min(1e-8)
    return _masked_mean(diff, mask) / scale


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers mean pooling over real tokens."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pooled_cosine(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, pipeline: SentencePipeline | None = None
) -> torch.Tensor:
    """Per-sequence cosine (B,) between sentence embeddings: those of a sentence-transformers
    ``pipeline`` (pooling, Dense, Normalize) when given, else mean-pooled hidden states."""
    if pipeline is None:
        return F.cosine_similarity(mean_pool(student.float(), mask), mean_pool(teacher.float(), mask), dim=-1)
    return F.cosine_similarity(pipeline.embed(student, mask), pipeline.embed(teacher, mask), dim=-1)


def reconstruction(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative squared error ``||rows - target||^2 / ||target||^2`` (Distilled Embedding)."""
    return (rows.float() - target.float()).pow(2).sum() / target.float().pow(2).sum().clamp_min(1e-12)


def causal_lm(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy per sequence position pair (predict ``ids[:, 1:]``)."""
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return _masked_mean(ce, mask[:, 1:])


def causal_lm_chunked(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """:func:`causal_lm` from the head's input, ``chunk`` positions at a time (no gradient: for evaluation)."""
    keep = mask[:, 1:].bool()
    states, targets = hidden[:, :-1][keep], ids[:, 1:][keep]
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, states.shape[0], chunk):
            logits = head(states[start : start + chunk]).float()
            total += float(F.cross_entropy(logits, targets[start : start + chunk], reduction="sum"))
    return (total / max(states.shape[0], 1)).float()


def masked_lm(logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Cross entropy on the masked positions only."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    return _masked_mean(ce, masked)
