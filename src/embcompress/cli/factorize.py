"""``embcompress factorize``: replace the embeddings with fitted factors and write a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..api import LoadOptions, factorize_checkpoint
from ..compress import CompressionResult, FactorizeOptions
from ..methods import method_names
from . import app
from ._common import RichReporter, handle_errors, parse_csv, print_json, setup_logging, stdout


@app.command()
@handle_errors
def factorize(
    model: str = typer.Argument(..., help="Local folder, hub id, .gguf file, or alias (minilm, smollm2)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the compressed checkpoint to."),
    rank: int | None = typer.Option(None, "--rank", "-r", help="Rank for every replaced matrix."),
    rank_input: int | None = typer.Option(None, help="Rank of the input embedding (overrides --rank)."),
    rank_output: int | None = typer.Option(None, help="Rank of an untied LM head (overrides --rank)."),
    method: str = typer.Option("svd", "--method", "-m", help=f"Factorization method: {', '.join(method_names())}."),
    targets: str = typer.Option("input,output", help="Matrices to replace: input, output or both."),
    factor_dtype: str = typer.Option("float32", help="Factor storage: float32, float16, bfloat16, int8."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL's folder (de-quantized on load)."),
    dtype: str = typer.Option("float32", help="Dtype to load the model in: float32, float16, bfloat16."),
    device: str = typer.Option("cpu", help="Device for the fit: cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, help="Seed for any randomness in the fit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    trust_remote_code: bool = typer.Option(False, help="Allow custom model code from the checkpoint."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library and transformers logs."),
) -> None:
    """Factorize the token embeddings of MODEL and write a compressed safetensors checkpoint."""
    setup_logging(verbose)
    options = FactorizeOptions(
        method=method,
        rank=rank,
        rank_input=rank_input,
        rank_output=rank_output,
        targets=parse_csv(targets),
        factor_dtype=factor_dtype,
        seed=seed,
    )
    load = LoadOptions(gguf_file=gguf_file, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    result = factorize_checkpoint(model, output, options, load, overwrite, RichReporter(enabled=not json_out))
    if json_out:
        print_json({**result.to_dict(), "output": str(output)})
    else:
        stdout.print(result_table(result))
        stdout.print(f"wrote [bold]{output}[/]")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def result_table(result: CompressionResult) -> Table:
    """Rich table: parameters and bytes before -> after per module, ratio, relative error."""
    table = Table(title=f"embcompress factorize ({result.config.method})")
    for col in ("module", "shape", "rank", "params", "MB", "ratio", "rel. err"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for m in result.modules:
        if m.tied_to:
            table.add_row(f"{m.path} ({m.role})", f"tied to {m.tied_to}", str(m.rank), "-", "-", "-", "-")
            continue
        table.add_row(
            f"{m.path} ({m.role})",
            f"{m.shape[0]}x{m.shape[1]}",
            str(m.rank),
            f"{_millions(m.params_before)} -> {_millions(m.params_after)}",
            f"{m.bytes_before / 1e6:.1f} -> {m.bytes_after / 1e6:.1f}",
            f"{m.ratio:.1f}x",
            f"{m.relative_error:.3f}" if m.relative_error is not None else "-",
        )
    table.caption = f"model parameters {result.params_before:,} -> {result.params_after:,}"
    return table
