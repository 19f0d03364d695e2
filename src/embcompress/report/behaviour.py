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
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sentence import SentencePipeline, pipeline_of, sentence_embedding
from .buckets import BUCKETS
from .evalset import EvalSet

#: Above this many stored teacher log-probabilities, they are kept in float16 (KL error ~1e-3).
FLOAT32_CACHE_LIMIT = 64_000_000
#: Stored teacher log-probabilities above this many bytes go to a temporary file, read back a chunk at a
#: time (4096 tokens of a 262k vocabulary are 2 GB in float16; the file's pages are not the process's memory).
MEMORY_CACHE_BYTES = 256 * 2**20
#: Logits computed at once: rows of a batch go through the model in groups of at most this many bytes of
#: float32 logits (at least one row), and log-probabilities are compared this many bytes at a time.
LOGITS_BYTES = 128 * 2**20
#: Log-probabilities compared at once (float32 bytes of one model's chunk; the KL holds ~5 such chunks).
COMPARE_BYTES = 32 * 2**20


class StoredLogp:
    """The teacher's log-probabilities at the scored positions of every batch, in memory or spilled to a file."""

    def __init__(self, vocab: int, dtype: torch.dtype, spill: bool) -> None:
        self.vocab, self.dtype, self.rows = vocab, dtype, 0
        self._parts: list[torch.Tensor] = []
        self._dir = tempfile.TemporaryDirectory(prefix="embcompress-teacher-") if spill else None
        self._file = Path(self._dir.name) / "logp.bin" if self._dir is not None else None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, logp: torch.Tensor) -> tuple[int, int]:
        """Store ``logp`` (positions x vocab); returns its ``(start, stop)`` position range."""
        start = self.rows
        values = logp.to(self.dtype).contiguous()
        if self._file is None:
            self._parts.append(values)
        else:
            with self._file.open("ab") as handle:
                handle.write(values.view(torch.uint8).numpy().tobytes())
        self.rows += values.shape[0]
        return start, self.rows

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Positions ``start:stop`` as float32."""
        if self._file is None:
            out, offset = [], 0
            for part in self._parts:
                lo, hi = max(start - offset, 0), min(stop - offset, part.shape[0])
                if lo < hi:
                    out.append(part[lo:hi])
                offset += part.shape[0]
            return torch.cat(out).float() if out else torch.empty(0, self.vocab)
        item = torch.empty((), dtype=self.dtype).element_size()
        raw = np.fromfile(
            self._file, dtype=np.uint8, count=(stop - start) * self.vocab * item, offset=start * self.vocab * item
        )
        return torch.from_numpy(raw).view(self.dtype).reshape(stop - start, self.vocab).float()


def token_chunk(vocab: int) -> int:
    """Positions whose float32 log-probabilities fit :data:`COMPARE_BYTES` (at least one)."""
    return max(1, COMPARE_BYTES // (4 * vocab))


@dataclass
class TeacherOutputs:
    """Everything the comparisons need from the teacher, per batch (LM log-probabilities in ``logp``)."""

    eval_set: EvalSet
    per_batch: list[dict[str, torch.Tensor]] = field(default_factory=list)
    neighbours: int = 10
    pipeline: SentencePipeline | None = None
    logp: StoredLogp | None = None


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))


def _row_groups(batch: dict[str, torch.Tensor], vocab: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` split into groups of rows whose float32 logits fit :data:`LOGITS_BYTES` (at least one row)."""
    rows, length = batch["input_ids"].shape
    step = max(1, LOGITS_BYTES // (4 * vocab * max(length, 1)))
    if step >= rows:
        return [batch]
    return [{k: v[i : i + step] for k, v in batch.items()} for i in range(0, rows, step)]


def _scored(eval_set: EvalSet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions are scored (next token / masked token) and their target tokens."""
    if eval_set.task == "causal-lm":
        ids, mask = batch["input_ids"], batch["attention_mask"]
        select = torch.zeros_like(mask, dtype=torch.bool)
        select[:, :-1] = (mask[:, :-1] * mask[:, 1:]).bool()
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        return select, targets
    return batch["labels"] != -100, batch["labels"]


def _lm_logp(
    model: nn.Module, eval_set: EvalSet, batch: dict[str, torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The target token at each scored position and the model's log-probabilities there, a group of rows
    at a time (a 262k vocabulary's logits are 1 MB per token in float32)."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    for group in _row_groups(batch, vocab):
        select, targets = _scored(eval_set, group)
        logits = _forward(model, group).logits
        picked = logits[select.to(logits.device)].float().cpu()
        del logits
        yield targets[select], F.log_softmax(picked, dim=-1)


def _lm_teacher(model: nn.Module, eval_set: EvalSet, batch: dict[str, torch.Tensor], store: StoredLogp) -> dict:
    parts: dict[str, list[torch.Tensor]] = {"targets": [], "nll": [], "top5": []}
    start = store.rows
    for targets, logp in _lm_logp(model, eval_set, batch):
        parts["targets"].append(targets)
        parts["nll"].append(-logp.gather(1, targets[:, None])[:, 0])
        parts["top5"].append(logp.topk(5, dim=-1).indices)
        store.append(logp)
    out = {key: torch.cat(values) for key, values in parts.items()}
    out["span"] = torch.tensor([start, store.rows])
    return out


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
    if eval_set.task != "encoder":
        vocab = int(model.get_input_embeddings().num_embeddings)
        entries = eval_set.n_tokens * vocab
        dtype = torch.float32 if entries <= FLOAT32_CACHE_LIMIT else torch.float16
        out.logp = StoredLogp(vocab, dtype, spill=entries * dtype.itemsize > MEMORY_CACHE_BYTES)
    for batch in eval_set.batches:
        if eval_set.task == "encoder":
            out.per_batch.append(_encoder_outputs(model, batch, pipeline))
        else:
            assert out.logp is not None
            out.per_batch.append(_lm_teacher(model, eval_set, batch, out.logp))
        if progress is not None:
            progress()
    return out


def _lm_student_batch(
    model: nn.Module, eval_set: EvalSet, batch: dict, teacher: dict, store: StoredLogp
) -> dict[str, torch.Tensor]:
    """Per-position metrics against the teacher, computed :func:`token_chunk` positions at a time."""
    parts: dict[str, list[torch.Tensor]] = {"targets": [], "nll_student": [], "kl": [], "top5_s": []}
    position = int(teacher["span"][0])
    for targets, logp_s in _lm_logp(model, eval_set, batch):
        step = token_chunk(logp_s.shape[1])
        for i in range(0, logp_s.shape[0], step):
            part = logp_s[i : i + step]
            logp_t = store.read(position, position + part.shape[0])
            parts["kl"].append((logp_t.exp() * (logp_t - part)).sum(-1))
            parts["top5_s"].append(part.topk(5, dim=-1).indices)
            position += part.shape[0]
            del logp_t
        parts["targets"].append(targets)
        parts["nll_student"].append(-logp_s.gather(1, targets[:, None])[:, 0])
    rows = {key: torch.cat(values) for key, values in parts.items()}
    top5_s, targets = rows.pop("top5_s"), rows["targets"]
    overlap = (top5_s[:, :, None] == teacher["top5"][:, None, :]).any(-1).float().sum(-1) / 5
    return {
        **rows,
        "nll_teacher": teacher["nll"],
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
            assert teacher.logp is not None
            parts.append(_lm_student_batch(student, teacher.eval_set, batch, cached, teacher.logp))
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
