"""Behaviour of a student against its teacher on the same batches; teacher outputs are computed once.

* causal LM: perplexity of both and their ratio, KL(teacher || student) per token, top-1 agreement
  (same argmax) and top-5 agreement (overlap of the two top-5 sets / 5);
* masked LM: accuracy at masked positions of both, agreement of the two predictions, KL;
* encoder: token hidden-state cosine, sentence-embedding cosine, and overlap of each document's ``k``
  nearest neighbours (cosine) among the evaluated documents. The sentence embedding is the one the
  teacher's sentence-transformers pipeline gives (pooling, Dense, Normalize: :mod:`embcompress.sentence`),
  or the mean-pooled last hidden state of a bare encoder.

Per-token metrics are also split by the frequency bucket of the token that matters: the predicted
(next / masked) token for LMs, the input token for encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..sentence import SentencePipeline, pipeline_of, sentence_embedding
from .buckets import BUCKETS
from .evalset import EvalSet

#: Above this many stored teacher log-probabilities, they are kept in float16 (KL error ~1e-3).
FLOAT32_CACHE_LIMIT = 64_000_000


@dataclass
class TeacherOutputs:
    """Everything the comparisons need from the teacher, per batch."""

    eval_set: EvalSet
    per_batch: list[dict[str, torch.Tensor]] = field(default_factory=list)
    neighbours: int = 10
    pipeline: SentencePipeline | None = None


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))


def _lm_logp(model: nn.Module, eval_set: EvalSet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target token at each scored position (next token / masked token) and the model's log-probabilities there."""
    if eval_set.task == "causal-lm":
        ids, mask = batch["input_ids"], batch["attention_mask"]
        select = torch.zeros_like(mask, dtype=torch.bool)
        select[:, :-1] = (mask[:, :-1] * mask[:, 1:]).bool()
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
    else:
        select, targets = batch["labels"] != -100, batch["labels"]
    return targets[select], F.log_softmax(_forward(model, batch).logits.float().cpu()[select], dim=-1)


def _lm_teacher(model: nn.Module, eval_set: EvalSet, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict:
    targets, logp = _lm_logp(model, eval_set, batch)
    return {
        "targets": targets,
        "logp": logp.to(dtype),
        "nll": -logp.gather(1, targets[:, None])[:, 0],
        "top5": logp.topk(5, dim=-1).indices,
    }


def _encoder_outputs(model: nn.Module, batch: dict[str, torch.Tensor], pipeline: SentencePipeline | None) -> dict:
    hidden = _forward(model, batch).last_hidden_state.float().cpu()
    with torch.no_grad():
        pooled = sentence_embedding(pipeline, hidden, batch["attention_mask"])
    return {"hidden": hidden, "pooled": F.normalize(pooled.float(), dim=-1)}


def teacher_outputs(
    model: nn.Module,
    eval_set: EvalSet,
    neighbours: int = 10,
    progress: Any = None,
    pipeline: SentencePipeline | None = None,
) -> TeacherOutputs:
    """Run the teacher once over ``eval_set`` and keep what the comparisons need; sentence embeddings
    follow ``pipeline`` (default: the one attached to ``model``), for the teacher and every student."""
    pipeline = pipeline or pipeline_of(model)
    out = TeacherOutputs(eval_set, neighbours=neighbours, pipeline=pipeline)
    vocab = model.get_input_embeddings().weight.shape[0]
    dtype = torch.float32 if eval_set.n_tokens * vocab <= FLOAT32_CACHE_LIMIT else torch.float16
    for batch in eval_set.batches:
        if eval_set.task == "encoder":
            out.per_batch.append(_encoder_outputs(model, batch, pipeline))
        else:
            out.per_batch.append(_lm_teacher(model, eval_set, batch, dtype))
        if progress is not None:
            progress()
    return out


def _lm_student_batch(model: nn.Module, eval_set: EvalSet, batch: dict, teacher: dict) -> dict[str, torch.Tensor]:
    targets, logp_s = _lm_logp(model, eval_set, batch)
    logp_t = teacher["logp"].float()
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    top5_s = logp_s.topk(5, dim=-1).indices
    overlap = (top5_s[:, :, None] == teacher["top5"][:, None, :]).any(-1).float().sum(-1) / 5
    return {
        "targets": targets,
        "nll_teacher": teacher["nll"],
        "nll_student": -logp_s.gather(1, targets[:, None])[:, 0],
        "kl": kl,
        "top1": (top5_s[:, 0] == teacher["top5"][:, 0]).float(),
        "top5": overlap,
        "correct_teacher": (teacher["top5"][:, 0] == targets).float(),
        "correct_student": (top5_s[:, 0] == targets).float(),
    }


def _ppl(nll: torch.Tensor) -> float:
    return math.exp(float(nll.double().mean())) if nll.numel() else float("nan")


def _lm_summary(rows: dict[str, torch.Tensor], task: str) -> dict[str, Any]:
    out = {
        "tokens": int(rows["kl"].numel()),
        "kl": float(rows["kl"].double().mean()),
        "top5_agreement": float(rows["top5"].mean()),
    }
    if task == "causal-lm":
        ppl_t, ppl_s = _ppl(rows["nll_teacher"]), _ppl(rows["nll_student"])
        out.update(perplexity_teacher=ppl_t, perplexity_student=ppl_s, perplexity_ratio=ppl_s / ppl_t)
        out["top1_agreement"] = float(rows["top1"].mean())
        return out
    out["accuracy_teacher"] = float(rows["correct_teacher"].mean())
    out["accuracy_student"] = float(rows["correct_student"].mean())
    out["agreement"] = float(rows["top1"].mean())
    return out


def _encoder_student_batch(
    model: nn.Module, batch: dict, teacher: dict, pipeline: SentencePipeline | None
) -> dict[str, torch.Tensor]:
    student = _encoder_outputs(model, batch, pipeline)
    mask = batch["attention_mask"].bool()
    cos = F.cosine_similarity(student["hidden"], teacher["hidden"], dim=-1, eps=1e-12)
    return {
        "targets": batch["input_ids"][mask],
        "token_cosine": cos[mask],
        "pooled": student["pooled"],
        "pooled_teacher": teacher["pooled"],
    }


def neighbour_overlap(reference: torch.Tensor, other: torch.Tensor, k: int) -> float | None:
    """Mean share of each row's ``k`` nearest neighbours (cosine, self excluded) found by both."""
    n = reference.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return None

    def top(emb: torch.Tensor) -> torch.Tensor:
        sim = emb @ emb.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    a, b = top(reference), top(other)
    return float((a[:, :, None] == b[:, None, :]).any(-1).float().sum(1).mean() / k)


def _encoder_summary(rows: dict[str, torch.Tensor], k: int) -> dict[str, Any]:
    pooled_cos = (rows["pooled"] * rows["pooled_teacher"]).sum(-1)
    return {
        "documents": int(rows["pooled"].shape[0]),
        "tokens": int(rows["token_cosine"].numel()),
        "hidden_cosine": float(rows["token_cosine"].double().mean()),
        "pooled_cosine": float(pooled_cos.double().mean()),
        "pooled_cosine_min": float(pooled_cos.min()),
        "neighbours_k": min(k, int(rows["pooled"].shape[0]) - 1),
        "neighbour_overlap": neighbour_overlap(rows["pooled_teacher"], rows["pooled"], k),
    }


def _bucketed(rows: dict[str, torch.Tensor], buckets: torch.Tensor | None, task: str, special: torch.Tensor) -> Any:
    if buckets is None:
        return None
    which = buckets[rows["targets"].clamp(0, buckets.numel() - 1)]
    keep = ~torch.isin(rows["targets"], special)
    out: dict[str, Any] = {}
    for i, name in enumerate(BUCKETS):
        mask = (which == i) & keep
        n = int(mask.sum())
        if n == 0:
            out[name] = {"tokens": 0}
        elif task == "encoder":
            out[name] = {"tokens": n, "hidden_cosine": float(rows["token_cosine"][mask].double().mean())}
        else:
            sub = {key: rows[key][mask] for key in ("nll_teacher", "nll_student", "kl", "top1")}
            out[name] = {
                "tokens": n,
                "kl": float(sub["kl"].double().mean()),
                "top1_agreement": float(sub["top1"].mean()),
            }
            if task == "causal-lm":
                ratio = math.exp(float((sub["nll_student"] - sub["nll_teacher"]).double().mean()))
                out[name]["perplexity_ratio"] = ratio
    return out


def compare(
    student: nn.Module,
    teacher: TeacherOutputs,
    buckets: torch.Tensor | None = None,
    special_ids: list[int] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Metrics of ``student`` against the cached teacher outputs (see the module docstring)."""
    task = teacher.eval_set.task
    parts: list[dict[str, torch.Tensor]] = []
    for batch, cached in zip(teacher.eval_set.batches, teacher.per_batch, strict=True):
        if task == "encoder":
            parts.append(_encoder_student_batch(student, batch, cached, teacher.pipeline))
        else:
            parts.append(_lm_student_batch(student, teacher.eval_set, batch, cached))
        if progress is not None:
            progress()
    rows = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    summary = _encoder_summary(rows, teacher.neighbours) if task == "encoder" else _lm_summary(rows, task)
    special = torch.tensor(sorted(special_ids or []), dtype=torch.long)
    summary["by_bucket"] = _bucketed(rows, buckets, task, special)
    return summary


#: The one number per task shown at a glance and optimised in the sweep: (key, higher is better).
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    # KL, not the perplexity ratio: a head that favours frequent tokens can lower perplexity while changing the model
    "causal-lm": ("kl", False),
    "masked-lm": ("agreement", True),
    "encoder": ("pooled_cosine", True),
}
