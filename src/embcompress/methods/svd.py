"""Truncated SVD with a balanced split of the singular values between the factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import torch

from ..errors import EmbcompressError
from ..spectral import truncated_svd
from .base import FactorizationMethod, Factors, FitContext, MethodOptions

SVD_SOLVERS = ("auto", "gram", "randomized", "full")


@dataclass
class SVDOptions(MethodOptions):
    """Options of ``svd`` and ``weighted-svd``.

    Attributes:
        solver: Truncated-SVD solver: ``auto`` (``gram`` for small matrices, else ``randomized``),
            ``gram``, ``randomized`` or ``full`` (see :func:`embcompress.spectral.truncated_svd`).
    """

    label: ClassVar[str] = "svd"

    solver: str = "auto"

    def validate(self) -> None:
        check_solver(self.solver)


def check_solver(solver: str) -> None:
    """Refuse an unknown truncated-SVD solver name."""
    if solver not in SVD_SOLVERS:
        raise EmbcompressError(f"unknown SVD solver '{solver}'; valid: {', '.join(SVD_SOLVERS)}")


def balanced_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> Factors:
    """Split the singular values evenly: ``codes = U sqrt(S)``, ``basis = sqrt(S) Vh``."""
    root = s.sqrt()
    return Factors(codes=u * root, basis=root[:, None] * vh)


class SVDMethod(FactorizationMethod):
    """Plain truncated SVD (the ALBERT-style factorized embedding, fitted post hoc)."""

    name: ClassVar[str] = "svd"
    description: ClassVar[str] = "truncated SVD, singular values split evenly between the factors"
    options_class: ClassVar[type[MethodOptions]] = SVDOptions

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        opts = cast(SVDOptions, self.options_of(ctx))
        u, s, vh = truncated_svd(matrix, rank, opts.solver, ctx.seed)
        return balanced_factors(u, s, vh)
