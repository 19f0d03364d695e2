"""``embcompress factorize``: replace the embeddings with fitted factors and write a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..factorize import CompressionResult, FactorizeOptions, factorize_checkpoint
from ..frequency import FrequencyOptions
from ..methods import method_names, parse_method_options
from ..sources import LoadOptions
from ._common import (
    GgufFile,
    JsonOut,
    Overwrite,
    RichReporter,
    TrustRemoteCode,
    Verbose,
    command,
    finish,
    parse_csv,
)

_default = FactorizeOptions.default
_freq = FrequencyOptions.default
_load = LoadOptions.default


@command
def factorize(
    model: str = typer.Argument(..., help="Local folder, hub id, .gguf file, or alias (minilm, smollm2, gemma3)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the compressed checkpoint to."),
    rank: int | None = typer.Option(_default("rank"), "--rank", "-r", help="Rank for every replaced matrix."),
    rank_input: int | None = typer.Option(
        _default("rank_input"), help="Rank of the input embedding (overrides --rank)."
    ),
    rank_output: int | None = typer.Option(
        _default("rank_output"), help="Rank of an untied LM head (overrides --rank)."
    ),
    energy: float | None = typer.Option(
        _default("energy"),
        help="Budget: smallest rank keeping this share of spectral energy, in (0, 1] (weighted for weighted-svd).",
    ),
    ratio: float | None = typer.Option(
        _default("ratio"), help="Budget: largest rank compressing the saved bytes at least this much."
    ),
    method: str = typer.Option(
        _default("method"), "--method", "-m", help=f"Factorization method: {', '.join(method_names())}."
    ),
    option: list[str] = typer.Option(
        [], "--option", "-O", help="Method option KEY=VALUE (repeatable), e.g. -O max_iter=300; see docs/methods.md."
    ),
    buckets: str | None = typer.Option(None, help="grouped: bucket sizes by frequency, e.g. 4000,rest."),
    bucket_ranks: str | None = typer.Option(None, help="grouped: rank per bucket (or 'dense'), e.g. dense,64."),
    freq_data: str | None = typer.Option(
        None, help="Text (file, folder, JSONL, parquet) counted with the model's tokenizer for token frequencies."
    ),
    freq_exponent: float = typer.Option(_freq("exponent"), help="Row weight = max(count, floor) ** exponent."),
    freq_floor: float = typer.Option(_freq("floor"), help="Pseudo-count of tokens never seen in --freq-data."),
    targets: str = typer.Option(",".join(_default("targets")), help="Matrices to replace: input, output or both."),
    factor_dtype: str = typer.Option(
        _default("factor_dtype"), help="Factor storage: float32, float16, bfloat16, int8."
    ),
    gguf_file: GgufFile = None,
    dtype: str = typer.Option(_load("dtype"), help="Dtype to load the model in: float32, float16, bfloat16."),
    device: str = typer.Option(_load("device"), help="Device for the fit: cpu, cuda, cuda:N."),
    seed: int = typer.Option(_default("seed"), help="Seed for any randomness in the fit."),
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Factorize the token embeddings of MODEL and write a compressed safetensors checkpoint."""
    options = FactorizeOptions(
        method=method,
        rank=rank,
        rank_input=rank_input,
        rank_output=rank_output,
        energy=energy,
        ratio=ratio,
        targets=parse_csv(targets),
        factor_dtype=factor_dtype,
        seed=seed,
        method_options=parse_method_options(option, buckets, bucket_ranks),
    )
    frequency = FrequencyOptions(freq_data, exponent=freq_exponent, floor=freq_floor) if freq_data else None
    load = LoadOptions(gguf_file=gguf_file, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    reporter = RichReporter(enabled=not json_out)
    result = factorize_checkpoint(model, output, options, load, overwrite, reporter, frequency=frequency)
    finish(json_out, {**result.to_dict(), "output": str(output)}, result_table(result), f"wrote [bold]{output}[/]")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def result_table(result: CompressionResult) -> Table:
    """Rich table: parameters and bytes before -> after per module, ratio, relative error."""
    table = Table(title=f"embcompress factorize ({result.config.method})")
    weighted = any(m.weighted_relative_error is not None for m in result.modules)
    columns = ("module", "shape", "rank", "params", "MB", "ratio", "rel. err") + (("freq-w. err",) if weighted else ())
    for col in columns:
        table.add_column(col, justify="left" if col == "module" else "right")
    for m in result.modules:
        if m.tied_to:
            table.add_row(f"{m.path} ({m.role})", f"tied to {m.tied_to}", str(m.rank), *["-"] * (len(columns) - 3))
            continue
        cells = [
            f"{m.path} ({m.role})",
            f"{m.shape[0]}x{m.shape[1]}",
            str(m.rank),
            f"{_millions(m.params_before)} -> {_millions(m.params_after)}",
            f"{m.bytes_before / 1e6:.1f} -> {m.bytes_after / 1e6:.1f}",
            f"{m.ratio:.1f}x",
            f"{m.relative_error:.3f}" if m.relative_error is not None else "-",
        ]
        if weighted:
            cells.append(f"{m.weighted_relative_error:.3f}" if m.weighted_relative_error is not None else "-")
        table.add_row(*cells)
    budget = result.budget
    mode = f"{budget['mode']} {budget['value']}" if budget.get("mode") else "per-target ranks"
    ranks = ", ".join(f"{role} {rank}" for role, rank in budget.get("ranks", {}).items())
    caption = f"model parameters {result.params_before:,} -> {result.params_after:,}; budget {mode} -> rank {ranks}"
    if any(m.serving_dense and not m.tied_to for m in result.modules):
        caption += "\nserving materialises the dense V x H matrix for the LM head (nonlinear decoder)"
    table.caption = caption
    return table
