"""Frequency-weighted truncated SVD: the exact minimiser of ``sum_t w_t ||E_t - E_hat_t||^2`` at rank r.

With ``W = diag(w)``, the SVD ``W^1/2 E = U S Vh`` gives the optimal rank-``r`` weighted
approximation ``E_hat = W^-1/2 U_r S_r Vh_r``. Since ``W^-1/2 U_r S_r = E Vh_r.T``, the factors are
``codes = E Vh_r.T / sqrt(S_r)`` and ``basis = sqrt(S_r) Vh_r``: every row (a never-seen token with
weight 0 included) is projected onto the frequency-weighted principal subspace, with no division by
the weights.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch

from ..errors import EmbcompressError
from ..spectral import truncated_svd
from .base import FactorizationMethod, Factors, FitContext, MethodOptions
from .svd import SVDOptions


def require_weights(ctx: FitContext, method: str, rows: int) -> torch.Tensor:
    """The row weights of ``ctx`` as a float tensor of length ``rows``; a clear error when absent."""
    if ctx.row_weights is None:
        raise EmbcompressError(f"method '{method}' needs token frequencies; pass --freq-data PATH")
    weights = ctx.row_weights.detach().float().flatten()
    if weights.numel() != rows:
        raise EmbcompressError(f"row weights have {weights.numel()} entries but the matrix has {rows} rows")
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise EmbcompressError("row weights must be finite and non-negative")
    if float(weights.sum()) <= 0:
        raise EmbcompressError("row weights are all zero")
    return weights


def weighted_subspace(
    matrix: torch.Tensor, weights: torch.Tensor, rank: int, solver: str = "auto", seed: int = 0
) -> Factors:
    """Rank-``rank`` factors minimising the row-weighted squared error (see the module docstring)."""
    m = matrix.detach().float()
    scaled = m * weights.to(m.device).sqrt()[:, None]
    _, s, vh = truncated_svd(scaled, rank, solver, seed)
    root = s.clamp_min(1e-12).sqrt()
    return Factors(codes=(m @ vh.T) / root, basis=root[:, None] * vh)


class WeightedSVDMethod(FactorizationMethod):
    """Truncated SVD of the frequency-weighted matrix, unscaled back to the original rows."""

    name: ClassVar[str] = "weighted-svd"
    description: ClassVar[str] = "SVD of diag(sqrt w) E (w from token frequencies), exact weighted optimum"
    options_class: ClassVar[type[MethodOptions]] = SVDOptions
    weights_use: ClassVar[str] = "required"
    weighted_energy: ClassVar[bool] = True

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        weights = require_weights(ctx, self.name, matrix.shape[0])
        opts = cast(SVDOptions, self.options_of(ctx))
        return weighted_subspace(matrix, weights, rank, opts.solver, ctx.seed)
