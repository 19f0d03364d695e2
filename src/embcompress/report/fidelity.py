"""How close a replacement matrix is to the original, row by row and by token-frequency bucket."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..codec import reference_quantize
from ..modules import FactorizedLinear
from .buckets import BUCKETS

RowFn = Callable[[int, int], torch.Tensor]
CHUNK = 8192


def rows_of(module: nn.Module) -> RowFn:
    """A function returning rows ``start:stop`` of the (approximated) matrix held by ``module``."""
    if isinstance(module, FactorizedLinear):
        module = module.source
    if hasattr(module, "dense_rows"):
        return module.dense_rows  # type: ignore[no-any-return]
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return lambda start, stop: weight[start:stop]
    raise TypeError(f"cannot read the matrix of {type(module).__name__}")


def quantized_rows(original: torch.Tensor, scheme: str) -> RowFn:
    """Rows of ``original`` through the reference quantizer ``scheme`` (every scheme works within rows, so
    chunks are exact)."""
    return lambda start, stop: reference_quantize(scheme, original[start:stop].float())[0]


def row_errors(original: torch.Tensor, approx: RowFn, chunk: int = CHUNK) -> tuple[torch.Tensor, ...]:
    """Per-row squared error, squared norm and cosine, computed in chunks (float64 sums)."""
    diff2, ref2, cos = [], [], []
    with torch.no_grad():
        for start in range(0, original.shape[0], chunk):
            rows = original[start : start + chunk].float()
            other = approx(start, start + rows.shape[0]).float()
            diff2.append((rows - other).double().pow(2).sum(1))
            ref2.append(rows.double().pow(2).sum(1))
            cos.append(torch.nn.functional.cosine_similarity(rows.double(), other.double(), dim=1, eps=1e-12))
    return torch.cat(diff2), torch.cat(ref2), torch.cat(cos)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    return math.sqrt(float(num.sum()) / max(float(den.sum()), 1e-30))


def _cosine_stats(cos: torch.Tensor, ref2: torch.Tensor) -> dict[str, float | None]:
    valid = cos[ref2 > 0]
    if valid.numel() == 0:
        return {"row_cosine_mean": None, "row_cosine_min": None}
    return {"row_cosine_mean": float(valid.mean()), "row_cosine_min": float(valid.min())}


def matrix_fidelity(
    original: torch.Tensor, approx: RowFn, counts: torch.Tensor | None = None, buckets: torch.Tensor | None = None
) -> dict[str, Any]:
    """Relative Frobenius error, frequency-weighted error and row cosines, overall and per bucket.

    ``relative_error = ||E - E'||_F / ||E||_F``; ``weighted_relative_error`` weights each row's
    squared error and squared norm by its token count; cosines skip all-zero original rows.
    """
    diff2, ref2, cos = row_errors(original, approx)
    out: dict[str, Any] = {"relative_error": _ratio(diff2, ref2), **_cosine_stats(cos, ref2)}
    out["weighted_relative_error"] = None if counts is None else _ratio(diff2 * counts.double(), ref2 * counts.double())
    out["by_bucket"] = None if buckets is None else _by_bucket(diff2, ref2, cos, buckets)
    return out


def _by_bucket(
    diff2: torch.Tensor, ref2: torch.Tensor, cos: torch.Tensor, buckets: torch.Tensor
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(BUCKETS):
        mask = buckets == i
        out[name] = {
            "rows": int(mask.sum()),
            "relative_error": _ratio(diff2[mask], ref2[mask]) if bool(mask.any()) else None,
            **_cosine_stats(cos[mask], ref2[mask]),
        }
    return out
