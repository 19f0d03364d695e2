"""The ``embcompress`` command line (Typer). Each command lives in its own thin module."""

from __future__ import annotations

import importlib

import torch
import typer

from ..version import __version__

app = typer.Typer(
    name="embcompress",
    help="Compress the token embeddings (input embedding and LM head) of Hugging Face checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"embcompress {__version__}")
        raise typer.Exit()


def _threads(value: int | None) -> int | None:
    if value is not None:
        if value <= 0:
            raise typer.BadParameter(f"must be a positive integer, got {value}")
        torch.set_num_threads(value)
    return value


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    threads: int | None = typer.Option(
        None, "--threads", callback=_threads, help="Torch CPU threads for every command (default: torch's choice)."
    ),
) -> None:
    """Compress the token embeddings of Hugging Face checkpoints."""


# Each command module registers itself on `app` when imported.
COMMAND_MODULES = ("factorize", "inspect_cmd", "export", "distill", "report", "sweep", "compress_cmd")
for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    """Console-script entry point."""
    app()
