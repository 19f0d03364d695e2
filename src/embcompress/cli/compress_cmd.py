"""``embcompress compress``: the measured recipe at a target ratio, with the report against int8/int4."""

from __future__ import annotations

from pathlib import Path

import typer

from ..compress import CompressOptions, CompressResult, compress_checkpoint, domain_warning
from ..report.tables import glance_table
from ..sizes import mb
from ..sources import LoadOptions
from ._common import (
    AutoDevice,
    GgufFile,
    JsonOut,
    Overwrite,
    RichReporter,
    TrustRemoteCode,
    Verbose,
    auto_device,
    command,
    print_json,
    stdout,
)
from .report import emit, rich_table

_default = CompressOptions.default


@command
def compress(
    model: str = typer.Argument(..., help="Local folder, hub id, .gguf file, or alias (minilm, smollm2, gemma3)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the compressed checkpoint to."),
    ratio: float = typer.Option(
        _default("ratio"),
        "--ratio",
        help="Target size of the embedding vs fp32: 4 is int8's size, ~8 int4's, 16 half of int4's.",
    ),
    domain: bool = typer.Option(
        _default("domain"),
        "--domain",
        help="Plan bytes on --data's token counts (frequency buckets): wins on text like --data, loses on others.",
    ),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Text (file, folder, JSONL, parquet): report split, distillation, --domain counts."
    ),
    eval_data: str | None = typer.Option(None, help="Text for the report (default: the held-out split of --data)."),
    ood_data: str | None = typer.Option(
        None, help="Text of another kind for the out-of-domain column (default for LMs: text the model samples)."
    ),
    max_minutes: float | None = typer.Option(
        _default("max_minutes"),
        help="Distillation budget in minutes (default: 15 for encoders, 20 masked LMs, 40 causal LMs).",
    ),
    distill: bool | None = typer.Option(
        _default("distill"),
        "--distill/--no-distill",
        help="Distil towards the original (default: with --domain only; the transform code needs none).",
    ),
    dense_rows: int | None = typer.Option(None, help="--domain: fix the number of most frequent tokens kept whole."),
    tail_rank: int | None = typer.Option(None, help="--domain: fix the rank of the other tokens (with --dense-rows)."),
    heldout_fraction: float = typer.Option(
        _default("heldout_fraction"), help="Share of --data documents never trained on."
    ),
    text_field: str | None = typer.Option(None, help="Text field / column of JSONL or parquet data."),
    gguf_file: GgufFile = None,
    device: AutoDevice = None,
    seed: int = typer.Option(_default("seed"), help="Seed of the fit, the data order and the sampling."),
    report: bool = typer.Option(
        _default("report"),
        "--report/--no-report",
        help="Measure the quality report (--no-report: for scripts that measure the checkpoint themselves).",
    ),
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Compress the token embeddings of MODEL ~RATIO times; report against 4/8-bit quantization in and out of domain."""
    options = CompressOptions(
        ratio=ratio,
        domain=domain,
        data=data,
        eval_data=eval_data,
        ood_data=ood_data,
        max_minutes=max_minutes,
        distill=distill,
        heldout_fraction=heldout_fraction,
        seed=seed,
        text_field=text_field,
        dense_rows=dense_rows,
        tail_rank=tail_rank,
        report=report,
    )
    load = LoadOptions(gguf_file=gguf_file, device=auto_device(device), trust_remote_code=trust_remote_code)
    result = compress_checkpoint(model, output, options, load, overwrite, RichReporter(enabled=not json_out))
    if json_out:
        print_json(result.to_dict())
    else:
        show(result)


def show(result: CompressResult) -> None:
    """Layout, the reports (in domain and out of domain: verdicts and tables) and where the checkpoint went."""
    source = f"; frequencies from {result.frequency_source}" if result.frequency_source else ""
    stdout.print(f"{result.layout} ({mb(result.embedding_bytes)}){source}")
    if result.report is not None:
        emit(result.report, "rich")
    ood = result.ood_report
    if ood is not None and ood.get("behaviour") is not None:
        stdout.print(f"[bold]Out of domain[/] ({ood['source']}): {ood['glance']['verdict']}")
        stdout.print(rich_table(glance_table(ood)))
    if warning := domain_warning(result):
        stdout.print(f"[yellow]{warning}[/]")
    stdout.print(f"wrote [bold]{result.output}[/]")
