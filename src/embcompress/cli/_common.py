"""Shared CLI plumbing: error handling, rich progress, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import torch
import transformers
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import EmbcompressError, one_line
from . import app

console = Console(stderr=True)
stdout = Console()
F = TypeVar("F", bound=Callable[..., Any])

# Options shared by several commands (same flag, same meaning everywhere).
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library and transformers logs.")]
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow custom model code from the checkpoint.")]
GgufFile = Annotated[str | None, typer.Option(help="GGUF file inside the model's folder (de-quantized on load).")]
AutoDevice = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda when available).")]


def auto_device(device: str | None) -> str:
    """``device`` or, when not given, ``cuda`` if available else ``cpu``."""
    return device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"


def fail(message: str, code: int = 2) -> None:
    """Print one error line on stderr and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command(fn: F) -> F:
    """Register ``fn`` as a command of the app: logging is set up from its ``--verbose`` first, and user
    errors become one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging(kwargs.get("verbose", False))
        try:
            return fn(*args, **kwargs)
        except EmbcompressError as exc:
            fail(one_line(exc))
        except KeyboardInterrupt:
            fail("interrupted; nothing was written", code=130)
        except (OSError, MemoryError) as exc:
            fail(f"{type(exc).__name__}: {one_line(exc)}")

    return app.command()(wrapper)  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    """Library logs go through rich on stderr; transformers stays quiet unless verbose."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, handlers=[RichHandler(console=console, show_path=False)], force=True)
    logging.getLogger("embcompress").setLevel(logging.INFO if verbose else logging.WARNING)
    transformers.logging.set_verbosity_info() if verbose else transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class RichReporter:
    """Renders each library stage as one rich progress line (a spinner when the total is unknown)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[None]:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
        )
        with progress:
            self._progress, self._task = progress, progress.add_task(description, total=total, metrics="")
            yield
            progress.update(self._task, completed=total or 1, total=total or 1)
        self._progress = None

    def advance(self, steps: int = 1, **metrics: float) -> None:
        if self._progress is None:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self._progress.update(self._task, advance=steps, metrics=text)


def print_json(data: dict[str, Any]) -> None:
    """Machine-readable output on stdout (sorted keys)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def finish(json_out: bool, data: dict[str, Any], *lines: Any) -> None:
    """A command's result on stdout: ``data`` as JSON with ``--json``, else ``lines`` (text or rich tables)."""
    if json_out:
        print_json(data)
        return
    for line in lines:
        stdout.print(line)


def parse_csv(value: str | None) -> tuple[str, ...]:
    """Split a comma-separated option."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def parse_numbers(value: str | None, kind: type, name: str) -> tuple:
    """Split a comma-separated option of numbers (``kind`` ``int`` or ``float``) of the option ``--name``."""
    try:
        return tuple(kind(v) for v in parse_csv(value))
    except ValueError:
        raise EmbcompressError(f"--{name} must be comma-separated numbers, got '{value}'") from None
