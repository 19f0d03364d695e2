"""Registry of factorization methods, looked up by name."""

from __future__ import annotations

from ..errors import EmbcompressError
from .base import FactorizationMethod, Factors, FitContext
from .grouped import GroupedMethod
from .nmf import NMFMethod
from .nonlinear import NonlinearMethod
from .options import parse_method_options, parse_value
from .svd import SVDMethod
from .transform import TransformMethod
from .weighted_svd import WeightedSVDMethod

_REGISTRY: dict[str, type[FactorizationMethod]] = {}


def register_method(cls: type[FactorizationMethod]) -> type[FactorizationMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> FactorizationMethod:
    """Instantiate the method called ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise EmbcompressError(f"unknown method '{name}'; valid methods: {', '.join(method_names())}")
    return _REGISTRY[name]()


for _cls in (SVDMethod, WeightedSVDMethod, GroupedMethod, NMFMethod, NonlinearMethod, TransformMethod):
    register_method(_cls)

__all__ = [
    "FactorizationMethod",
    "Factors",
    "FitContext",
    "get_method",
    "method_names",
    "parse_method_options",
    "parse_value",
    "register_method",
]
