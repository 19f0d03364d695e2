"""The one options pattern: dataclasses validated at construction, strict ``from_dict``, JSON dicts.

Every options class of the library (factorize, compress, loading, token frequencies, distillation)
derives from :class:`Options`. Errors name the field as a command-line flag (``--max-minutes``), so
the CLI shows them as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import EmbcompressError

T = TypeVar("T", bound="Options")


def flag(name: str) -> str:
    """The command-line flag of field ``name``."""
    return "--" + name.replace("_", "-")


@dataclasses.dataclass
class Options:
    """Base of the options dataclasses: :meth:`validate` runs at construction."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`EmbcompressError` naming the first bad field (subclasses extend this)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build from :meth:`to_dict` output; unknown keys are an error listing the allowed ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise EmbcompressError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        return cls(**data)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (the CLI takes its defaults from here)."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default

    def require_positive(self, *names: str, optional: bool = False) -> None:
        """Raise ``--name must be a positive integer`` for the first field of ``names`` that is not one
        (``None`` passes when ``optional``)."""
        for name in names:
            value = getattr(self, name)
            require((optional and value is None) or value > 0, name, f"must be a positive integer, got {value}")

    def require_fraction(self, name: str, optional: bool = False) -> None:
        """Raise ``--name must be in (0, 1)`` unless field ``name`` is (or is ``None`` when ``optional``)."""
        value = getattr(self, name)
        require((optional and value is None) or 0 < value < 1, name, f"must be in (0, 1), got {value}")


def require(condition: bool, name: str, message: str) -> None:
    """Raise ``--name <message>`` unless ``condition``."""
    if not condition:
        raise EmbcompressError(f"{flag(name)} {message}")
