"""Truncated SVD with a balanced split of the singular values between the factors."""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from ..spectral import truncated_svd
from .base import FactorizationMethod, Factors, FitContext

logger = logging.getLogger(__name__)


def balanced_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> Factors:
    """Split the singular values evenly: ``codes = U sqrt(S)``, ``basis = sqrt(S) Vh``."""
    root = s.sqrt()
    return Factors(codes=u * root, basis=root[:, None] * vh)


class SVDMethod(FactorizationMethod):
    """Plain truncated SVD (the ALBERT-style factorized embedding, fitted post hoc)."""

    name: ClassVar[str] = "svd"
    description: ClassVar[str] = "truncated SVD, singular values split evenly between the factors"
    option_names: ClassVar[frozenset[str]] = frozenset({"solver"})

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        u, s, vh = truncated_svd(matrix, rank, ctx.options.get("solver", "auto"), ctx.seed)
        return balanced_factors(u, s, vh)
