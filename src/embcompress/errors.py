"""User-facing errors: one line that names the bad value and what is allowed."""

from __future__ import annotations


class EmbcompressError(ValueError):
    """An error caused by the user's input; the CLI prints its message as a single line."""


class ModelSourceError(EmbcompressError):
    """A model path, hub id or alias that cannot be resolved or loaded."""


class CheckpointError(EmbcompressError):
    """A compressed checkpoint that is missing, corrupt or inconsistent with its config."""


class BudgetError(EmbcompressError):
    """A rank / energy / ratio budget that cannot be met."""


def one_line(exc: BaseException) -> str:
    """Collapse an exception message to its first non-empty line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()
