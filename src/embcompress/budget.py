"""Rank budgets: a fixed rank, a share of spectral energy, or a target compression ratio of bytes.

* ``rank``: the rank itself (checked against the break-even rank).
* ``energy``: the smallest rank keeping that share of the spectral energy (sum of squared singular
  values); for frequency-aware methods (``weighted_energy``) the spectrum of ``diag(sqrt w) E``.
* ``ratio``: the largest rank whose stored bytes (factors in their dtype, int8 scales, offsets,
  decoders, as built) are at most ``dense bytes / ratio``.

Impossible budgets raise :class:`BudgetError` with the nearest feasible value.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from .config import ModuleSpec
from .errors import BudgetError
from .methods import FactorizationMethod
from .spectral import energy_curve, rank_for_energy, singular_values, weighted_singular_values

logger = logging.getLogger(__name__)


@dataclass
class Budget:
    """One budget mode and its value (``rank`` values are ints)."""

    mode: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "value": int(self.value) if self.mode == "rank" else self.value}


def budget_from(rank: int | None, energy: float | None, ratio: float | None) -> Budget | None:
    """The single budget given (``None`` when none is); refuses two at once and out-of-range values."""
    given = {k: v for k, v in (("rank", rank), ("energy", energy), ("ratio", ratio)) if v is not None}
    if len(given) > 1:
        raise BudgetError(f"give only one of --rank, --energy, --ratio (got {', '.join('--' + k for k in given)})")
    if energy is not None and not 0 < energy <= 1:
        raise BudgetError(f"--energy must be in (0, 1], got {energy}")
    if ratio is not None and not ratio > 1:
        raise BudgetError(f"--ratio must be greater than 1, got {ratio}")
    if not given:
        return None
    return Budget(*next(iter(given.items())))


def spectrum(matrix: torch.Tensor, method: FactorizationMethod, row_weights: torch.Tensor | None) -> torch.Tensor:
    """Singular values the energy budget is measured on (row-weighted for weighted methods)."""
    if method.weighted_energy and row_weights is not None:
        return weighted_singular_values(matrix, row_weights.clamp_min(0))
    return singular_values(matrix.detach().float())


def rank_for_energy_budget(energy: float, singular: torch.Tensor, limit: int, role: str, weighted: bool = False) -> int:
    """Smallest rank keeping ``energy``; an error naming the nearest feasible energy above ``limit``."""
    rank = min(rank_for_energy(singular, energy), len(singular))
    if rank > limit:
        best = float(energy_curve(singular)[limit - 1])
        kind = "weighted spectral energy" if weighted else "spectral energy"
        raise BudgetError(
            f"--energy {energy} needs rank {rank} for the {role} embedding, above its break-even rank {limit}; "
            f"the nearest feasible value is --energy {math.floor(best * 1000) / 1000} ({kind})"
        )
    return rank


def rank_for_ratio_budget(
    ratio: float, dense_bytes: int, spec: ModuleSpec, method: FactorizationMethod, limit: int
) -> int:
    """Largest rank whose stored bytes are at most ``dense_bytes / ratio`` (binary search on the size)."""

    def nbytes(rank: int) -> int:
        return method.stored_bytes(dataclasses.replace(spec, rank=rank, options=dict(spec.options)))

    smallest = dense_bytes / nbytes(1)
    if smallest < ratio:
        raise BudgetError(
            f"--ratio {ratio} is not reachable for the {spec.role} embedding: rank 1 already gives "
            f"{smallest:.1f}x; the nearest feasible value is --ratio {math.floor(smallest * 10) / 10}"
        )
    # compression falls as the rank grows: the ranks reaching ``ratio`` are 1 .. the count of them
    return bisect.bisect_left(range(1, limit + 1), True, key=lambda rank: dense_bytes / nbytes(rank) < ratio)


def resolve_rank(
    budget: Budget,
    spec: ModuleSpec,
    matrix: torch.Tensor,
    method: FactorizationMethod,
    limit: int,
    row_weights: torch.Tensor | None = None,
) -> int:
    """The rank ``budget`` gives for ``spec``'s matrix (``limit``: the largest admissible rank)."""
    if budget.mode == "rank":
        return int(budget.value)
    if budget.mode == "energy":
        weighted = method.weighted_energy and row_weights is not None
        rank = rank_for_energy_budget(budget.value, spectrum(matrix, method, row_weights), limit, spec.role, weighted)
    else:
        rank = rank_for_ratio_budget(budget.value, matrix.numel() * matrix.element_size(), spec, method, limit)
    logger.info("%s budget %s -> rank %d for %s", budget.mode, budget.value, rank, spec.path)
    return rank
