"""Dataclasses describing a compressed checkpoint; serialised into ``config.json``.

The compressed model's ``config.json`` carries ``quantization_config`` with
``quant_method: "embcompress"``; its other fields are :meth:`CompressionConfig.to_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import CheckpointError
from .version import FORMAT_VERSION, __version__

QUANT_METHOD = "embcompress"
ROLES = ("input", "output")


@dataclass
class ModuleSpec:
    """One replaced module: where it lives, its shape and how it is factorized.

    Attributes:
        path: Dotted module path in the model (e.g. ``model.embed_tokens``).
        role: ``"input"`` (embedding lookup) or ``"output"`` (LM head).
        method: Name of the factorization method (see :mod:`embcompress.methods`).
        rank: Inner dimension of the factorization.
        num_embeddings: Rows of the original matrix (vocabulary size, padding rows included).
        embedding_dim: Columns of the original matrix (hidden size).
        factor_dtype: Storage dtype of the factors (``float32``, ``float16``, ``bfloat16``, ``int8``).
        tied_to: For an output head that shares its factors with an input embedding: that path.
        aliases: Other module paths holding the same embedding (e.g. T5's ``encoder.embed_tokens``).
        padding_idx: Padding index of the original embedding, kept for gradient masking.
        bias: Whether an output head has a bias vector.
        offset: Whether the factorization stores a per-column offset (``E ~ codes @ basis - offset``).
        embed_scale: Multiplier the original embedding applied to its output, if any.
        options: Method-specific structure (e.g. hidden sizes of a nonlinear decoder).
    """

    path: str
    role: str
    method: str
    rank: int
    num_embeddings: int
    embedding_dim: int
    factor_dtype: str = "float32"
    tied_to: str | None = None
    aliases: list[str] = field(default_factory=list)
    padding_idx: int | None = None
    bias: bool = False
    offset: bool = False
    embed_scale: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleSpec:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        return _from_dict(cls, data)

    @property
    def owns_factors(self) -> bool:
        """True when this module stores factors (i.e. it is not a tied head)."""
        return self.tied_to is None


@dataclass
class CompressionConfig:
    """Everything needed to rebuild the factorized modules of a checkpoint."""

    modules: list[ModuleSpec]
    method: str
    format_version: int = FORMAT_VERSION
    embcompress_version: str = __version__
    seed: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (modules as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Build from :meth:`to_dict` output (or a ``quantization_config`` section)."""
        data = {k: v for k, v in data.items() if k != "quant_method"}
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version {version} is newer than this embcompress supports "
                f"({FORMAT_VERSION}); upgrade embcompress"
            )
        modules = [ModuleSpec.from_dict(m) for m in data.pop("modules", [])]
        return _from_dict(cls, {**data, "modules": modules})

    def module(self, path: str) -> ModuleSpec:
        """Return the spec for ``path``."""
        for spec in self.modules:
            if spec.path == path:
                return spec
        raise KeyError(path)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"unknown field(s) {unknown} in {cls.__name__}; allowed: {sorted(names)}")
    return cls(**data)
