"""Wall-clock latency of the teacher and the student on the same batch, and of the head / lookup alone."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..threads import torch_threads


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pair(
    teacher: Callable[..., Any], student: Callable[..., Any], repeats: int, *args: Any, **kwargs: Any
) -> dict[str, float]:
    """Median latency (ms) of the teacher's and the student's call on the same inputs, and student / teacher."""
    t, s = (median_seconds(functools.partial(fn, *args, **kwargs), repeats) for fn in (teacher, student))
    return {"teacher_ms": t * 1e3, "student_ms": s * 1e3, "ratio": s / max(t, 1e-12)}


def measure_speed(
    teacher: nn.Module,
    student: nn.Module,
    batch: dict[str, torch.Tensor],
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Forward latency of both models on ``batch``; LM-head and embedding-lookup latency alone.

    ``ratio`` is student time / teacher time (below 1: the student is faster). ``threads`` sets the
    torch CPU threads for the measurement only (on a busy shared CPU, 1 thread gives steadier small-op
    timings: a multi-threaded lookup waits for a second core).
    """
    with torch_threads(threads):
        return _measure(teacher, student, batch, repeats)


def _measure(teacher: nn.Module, student: nn.Module, batch: dict[str, torch.Tensor], repeats: int) -> dict[str, Any]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out: dict[str, Any] = {"batch_shape": list(ids.shape), "repeats": repeats, "threads": torch.get_num_threads()}
    out["forward"] = _pair(teacher, student, repeats, input_ids=ids, attention_mask=mask)
    emb_t, emb_s = teacher.get_input_embeddings(), student.get_input_embeddings()
    out["embedding_lookup"] = _pair(emb_t, emb_s, repeats, ids)
    head_t, head_s = teacher.get_output_embeddings(), student.get_output_embeddings()
    out["lm_head"] = None
    if head_t is not None and head_s is not None:
        hidden = torch.randn(*ids.shape, emb_t.weight.shape[1], generator=torch.Generator().manual_seed(0))
        out["lm_head"] = _pair(head_t, head_s, repeats, hidden)
    return out
