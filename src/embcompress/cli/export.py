"""``embcompress export``: write a vanilla dense checkpoint that any runtime loads."""

from __future__ import annotations

from pathlib import Path

import typer

from ..checkpoint import check_outside_input
from ..errors import EmbcompressError
from ..export import export_dense
from . import app
from ._common import JsonOut, Overwrite, RichReporter, Verbose, handle_errors, print_json, setup_logging, stdout


@app.command()
@handle_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A compressed checkpoint folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the dense checkpoint."),
    dense: bool = typer.Option(False, "--dense", help="Multiply the factors out into dense matrices."),
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Export a compressed checkpoint; --dense writes plain transformers weights."""
    setup_logging(verbose)
    if not dense:
        raise EmbcompressError("choose an export format: --dense (the only format so far)")
    check_outside_input(output, checkpoint)
    with RichReporter(enabled=not json_out).stage(f"exporting {checkpoint} -> {output}"):
        model = export_dense(checkpoint, output, overwrite)
    params = sum(p.numel() for p in model.parameters())
    if json_out:
        print_json({"output": str(output), "format": "dense", "params": params})
    else:
        stdout.print(f"wrote dense checkpoint [bold]{output}[/] ({params:,} parameters)")
