"""Dataclasses describing a compressed checkpoint; serialised into ``config.json``.

The compressed model's ``config.json`` carries ``quantization_config`` with
``quant_method: "embcompress"``; its other fields are :meth:`CompressionConfig.to_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import CheckpointError
from .quant import FACTOR_DTYPES
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
    def from_dict(cls, data: dict[str, Any], where: str = "module") -> ModuleSpec:
        """Build from :meth:`to_dict` output; unknown keys, wrong types and impossible values are an error."""
        spec = _from_dict(cls, data, where)
        spec.check(where)
        return spec

    def check(self, where: str = "module") -> None:
        """Raise :class:`CheckpointError` on a value no checkpoint writer produces."""
        where = f"{where} '{self.path}'" if self.path else where
        _require(bool(self.path), where, "path", self.path, "a non-empty module path")
        _require(self.role in ROLES, where, "role", self.role, " or ".join(repr(r) for r in ROLES))
        _require(bool(self.method), where, "method", self.method, "a registered method name")
        for name in ("rank", "num_embeddings", "embedding_dim"):
            _require(getattr(self, name) > 0, where, name, getattr(self, name), "a positive integer")
        _require(self.factor_dtype in FACTOR_DTYPES, where, "factor_dtype", self.factor_dtype, ", ".join(FACTOR_DTYPES))
        padding_ok = self.padding_idx is None or 0 <= self.padding_idx < self.num_embeddings
        _require(padding_ok, where, "padding_idx", self.padding_idx, f"null or an index below {self.num_embeddings}")
        _require(self.tied_to is None or self.role == "output", where, "tied_to", self.tied_to, "null for an input")

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
        if not isinstance(data, dict):
            raise CheckpointError(
                f"invalid quantization_config in config.json: it is {_json_type(data)}, not an object "
                "(re-create the checkpoint with embcompress)"
            )
        data = {k: v for k, v in data.items() if k != "quant_method"}
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version {version} is newer than this embcompress supports "
                f"({FORMAT_VERSION}); upgrade embcompress"
            )
        raw_modules = data.get("modules", [])
        _require(isinstance(raw_modules, list) and bool(raw_modules), "", "modules", raw_modules, "a non-empty list")
        modules = []
        for i, item in enumerate(raw_modules):
            if not isinstance(item, dict):
                _require(False, "", f"modules[{i}]", item, "an object describing one module")
            modules.append(ModuleSpec.from_dict(item, f"modules[{i}]"))
        config = _from_dict(cls, {**data, "modules": modules}, "")
        config.check()
        return config

    def check(self) -> None:
        """Cross-module consistency: unique paths, tied heads naming an input module of the config."""
        paths = [p for spec in self.modules for p in (spec.path, *spec.aliases)]
        _require(len(paths) == len(set(paths)), "", "modules", paths, "distinct module paths")
        inputs = {spec.path for spec in self.modules if spec.role == "input"}
        for spec in self.modules:
            ok = spec.tied_to is None or spec.tied_to in inputs
            _require(ok, f"module '{spec.path}'", "tied_to", spec.tied_to, f"one of {sorted(inputs)}")

    def module(self, path: str) -> ModuleSpec:
        """Return the spec for ``path``."""
        for spec in self.modules:
            if spec.path == path:
                return spec
        raise KeyError(path)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"unknown field(s) {unknown} in {cls.__name__}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        _require(_matches(value, hints[name]), where, name, value, _type_name(hints[name]))
    required = [f.name for f in dataclasses.fields(cls) if _no_default(f) and f.name not in data]
    if required:
        raise CheckpointError(
            f"invalid quantization_config in config.json: {where + ' ' if where else ''}lacks field(s) "
            f"{', '.join(required)} (re-create the checkpoint with embcompress)"
        )
    return cls(**data)


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _require(ok: bool, where: str, name: str, value: Any, allowed: str) -> None:
    """One line naming the field, the bad value and what is allowed."""
    if not ok:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        place = f"{where} field" if where else "field"
        raise CheckpointError(
            f"invalid quantization_config in config.json: {place} '{name}' is {shown}; allowed: {allowed} "
            "(re-create the checkpoint with embcompress)"
        )


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field annotation (``bool`` is not an ``int``; ``int`` is a ``float``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    """``int``, ``str or null``, ``list of str``... for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "an object"
    names = {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
