"""Common types for factorization methods."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import ModuleSpec
from ..errors import EmbcompressError
from ..modules import CompressedEmbedding, FactorizedEmbedding
from ..options import Options
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


_SCALARS: dict[type, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass
class MethodOptions(Options):
    """Base of the typed options of a method (``FactorizationMethod.options_class``).

    Scalar fields (``int``, ``float``, ``str``, ``bool``) are converted from the parsed command-line
    values (``-O lr=1`` gives an int) before :meth:`validate` runs; errors name the option as
    ``<label> option <name>``.
    """

    #: Method label used in error messages (``nmf option max_iter must be at least 1``).
    label: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            kind = hints.get(f.name)
            if kind in _SCALARS:
                setattr(self, f.name, self._convert(f.name, getattr(self, f.name), kind))
        super().__post_init__()

    def _convert(self, name: str, value: Any, kind: type) -> Any:
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        try:
            if kind is bool:
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                raise ValueError
            if isinstance(value, (bool, list, dict, tuple)) or value is None:
                raise ValueError
            if kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return kind(value)
        except (TypeError, ValueError):
            raise EmbcompressError(f"{self.label} option {name} must be {_SCALARS[kind]}, got {value!r}") from None

    @classmethod
    def field_names(cls) -> list[str]:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class FitContext:
    """Inputs a method may use besides the matrix and the rank.

    Attributes:
        seed: Seed for any randomness (randomized SVD, NMF initialisation).
        row_weights: Optional per-row importance (e.g. token frequencies), shape ``(V,)``.
        options: The method's typed options (``method.parse_options(...)``); ``None``: the options
            recorded in the spec being built, else the defaults.
        progress: Optional callback ``(step, total, metrics)`` for long fits.
        metric: Optional ``H x H`` PSD weight of the reconstruction error (methods that use one).
        priority: Optional token ids, most important first (:func:`embcompress.frequency.token_priority`),
            for methods that store the most important rows whole.
    """

    seed: int = 0
    row_weights: torch.Tensor | None = None
    options: MethodOptions | None = None
    progress: ProgressFn | None = None
    metric: torch.Tensor | None = None
    priority: torch.Tensor | None = None


class FactorizationMethod:
    """Base class: subclasses set ``name`` and implement :meth:`fit`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Typed options of this method (its fields are the only option names accepted).
    options_class: ClassVar[type[MethodOptions]] = MethodOptions
    #: Whether the method stores a per-column offset.
    uses_offset: ClassVar[bool] = False
    #: Token-frequency row weights: ``"required"`` (``--freq-data`` must be given), ``"optional"`` or ``"none"``.
    weights_use: ClassVar[str] = "none"
    #: Whether ``--energy`` is measured on the row-weighted matrix ``diag(sqrt w) E``.
    weighted_energy: ClassVar[bool] = False
    #: Whether the module's LM-head product materialises the dense ``V x H`` matrix.
    serving_dense: ClassVar[bool] = False
    #: Whether the budget is bytes (``--ratio`` / :meth:`target_bytes`) rather than a rank.
    byte_budget: ClassVar[bool] = False
    #: Storage dtype of the factors when the options name none.
    default_factor_dtype: ClassVar[str] = "float32"

    def parse_options(self, options: dict[str, Any] | MethodOptions | None = None) -> MethodOptions:
        """Typed options from a JSON / command-line dict: unknown keys and bad values are an error.

        An instance of :attr:`options_class` is returned as is; ``None`` gives the defaults.
        """
        if isinstance(options, self.options_class):
            return options
        if isinstance(options, MethodOptions):
            raise EmbcompressError(
                f"method '{self.name}' takes {self.options_class.__name__}, not {type(options).__name__}"
            )
        data = dict(options or {})
        allowed = self.options_class.field_names()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise EmbcompressError(
                f"method '{self.name}' does not take option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        return self.options_class.from_dict(data)

    def options_of(self, ctx: FitContext, spec: ModuleSpec | None = None) -> MethodOptions:
        """The typed options of a fit: ``ctx.options``, else those recorded in ``spec``, else the defaults."""
        if ctx.options is not None:
            return self.parse_options(ctx.options)
        return self.parse_options(spec.options if spec is not None else None)

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        """Fit linear factors of ``matrix`` at ``rank`` (linear methods implement this)."""
        raise NotImplementedError(f"method '{self.name}' does not produce linear factors")

    @property
    def module_class(self) -> type[CompressedEmbedding]:
        """Module class holding this method's factors (built empty when loading a checkpoint)."""
        return FactorizedEmbedding

    def build(self, spec: ModuleSpec, matrix: torch.Tensor, ctx: FitContext) -> CompressedEmbedding:
        """Fit ``matrix`` and return a new module; ``matrix`` is not modified."""
        factors = self.fit(matrix.detach(), spec.rank, ctx)
        module_class = self.module_class
        assert issubclass(module_class, FactorizedEmbedding), "methods with other modules override build()"
        return module_class.from_factors(spec, factors.codes, factors.basis, factors.offset, compute_dtype=matrix.dtype)

    def check_spec(self, spec: ModuleSpec) -> None:
        """Validate method-specific structure in ``spec.options`` before any work (default: nothing)."""

    def stored_bytes(self, spec: ModuleSpec) -> int:
        """Bytes the module built from ``spec`` stores (factors, scales, offset, decoder), built on meta."""
        return module_bytes(self.module_class.from_spec(spec, device="meta"))[1]

    def progress_total(self, options: MethodOptions) -> int | None:
        """Number of progress steps one fit reports through ``ctx.progress`` (``None``: no progress)."""
        return None

    def target_bytes(self, spec: ModuleSpec, ratio: float | None, options: MethodOptions) -> int:
        """Byte budget of ``spec``'s matrix for :attr:`byte_budget` methods."""
        raise EmbcompressError(f"method '{self.name}' takes a rank budget, not a byte budget")

    def params_per_rank(self, rows: int, cols: int) -> int:
        """Stored parameters added by one unit of rank (``rows + cols`` for ``codes @ basis``)."""
        return rows + cols
