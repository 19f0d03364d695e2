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


def require(condition: bool, name: str, message: str) -> None:
    """Raise ``--name <message>`` unless ``condition``."""
    if not condition:
        raise EmbcompressError(f"{flag(name)} {message}")
