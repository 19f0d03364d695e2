"""Common types for factorization methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import ModuleSpec
from ..errors import EmbcompressError
from ..modules import FactorizedEmbedding
from ..sizes import module_bytes

ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass
class Factors:
    """Result of a fit: ``matrix ~= codes @ basis - offset``."""

    codes: torch.Tensor
    basis: torch.Tensor
    offset: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.codes.shape[1]

    def reconstruct(self) -> torch.Tensor:
        out = self.codes @ self.basis
        return out - self.offset if self.offset is not None else out


@dataclass
class FitContext:
    """Inputs a method may use besides the matrix and the rank.

    Attributes:
        seed: Seed for any randomness (randomized SVD, NMF initialisation).
        row_weights: Optional per-row importance (e.g. token frequencies), shape ``(V,)``.
        options: Method-specific options, validated by the method.
        progress: Optional callback ``(step, total, metrics)`` for long fits.
    """

    seed: int = 0
    row_weights: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None


class FactorizationMethod:
    """Base class: subclasses set ``name`` and implement :meth:`fit`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Option names this method accepts (anything else is rejected before any work).
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: Whether the method stores a per-column offset.
    uses_offset: ClassVar[bool] = False
    #: Token-frequency row weights: ``"required"`` (``--freq-data`` must be given), ``"optional"`` or ``"none"``.
    weights_use: ClassVar[str] = "none"
    #: Whether ``--energy`` is measured on the row-weighted matrix ``diag(sqrt w) E``.
    weighted_energy: ClassVar[bool] = False
    #: Whether the module's LM-head product materialises the dense ``V x H`` matrix.
    serving_dense: ClassVar[bool] = False

    def validate_options(self, options: dict[str, Any]) -> None:
        """Reject options this method does not take."""
        unknown = sorted(set(options) - self.option_names)
        if unknown:
            allowed = ", ".join(sorted(self.option_names)) or "none"
            raise EmbcompressError(
                f"method '{self.name}' does not take option(s) {', '.join(unknown)}; allowed: {allowed}"
            )

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        """Fit linear factors of ``matrix`` at ``rank`` (linear methods implement this)."""
        raise NotImplementedError(f"method '{self.name}' does not produce linear factors")

    @property
    def module_class(self) -> type[FactorizedEmbedding]:
        """Module class holding this method's factors (built empty when loading a checkpoint)."""
        return FactorizedEmbedding

    def build(self, spec: ModuleSpec, matrix: torch.Tensor, ctx: FitContext) -> FactorizedEmbedding:
        """Fit ``matrix`` and return a new module; ``matrix`` is not modified."""
        factors = self.fit(matrix.detach(), spec.rank, ctx)
        return self.module_class.from_factors(
            spec, factors.codes, factors.basis, factors.offset, compute_dtype=matrix.dtype
        )

    def check_spec(self, spec: ModuleSpec) -> None:
        """Validate method-specific structure in ``spec.options`` before any work (default: nothing)."""

    def stored_bytes(self, spec: ModuleSpec) -> int:
        """Bytes the module built from ``spec`` stores (factors, scales, offset, decoder), built on meta."""
        return module_bytes(self.module_class.from_spec(spec, device="meta"))[1]

    def progress_total(self, options: dict[str, Any]) -> int | None:
        """Number of progress steps one fit reports through ``ctx.progress`` (``None``: no progress)."""
        return None

    def params_per_rank(self, rows: int, cols: int) -> int:
        """Stored parameters added by one unit of rank (``rows + cols`` for ``codes @ basis``)."""
        return rows + cols
