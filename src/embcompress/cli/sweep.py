"""``embcompress sweep``: methods x budgets in memory; quality vs bytes with the Pareto front and int8/int4."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import EmbcompressError
from ..methods import method_names
from ..report import EvalOptions, ReportOptions, SweepGrid, prepare_evaluation, report_json, run_sweep, sweep_html
from ..report.render import sweep_tables
from ..report.sweep import available_methods, save_dir_writer
from ..sources import LoadOptions, load_source
from . import app
from ._common import GgufFile, JsonOut, RichReporter, Verbose, console, handle_errors, parse_csv, setup_logging, stdout
from .report import check_html_path, rich_table, write_html


def _numbers(value: str | None, kind: type, name: str) -> tuple:
    try:
        out = tuple(kind(v) for v in parse_csv(value))
    except ValueError:
        raise EmbcompressError(f"--{name} must be comma-separated numbers, got '{value}'") from None
    if any(v <= 0 for v in out):
        raise EmbcompressError(f"--{name} values must be positive, got '{value}'")
    if name == "energies" and any(v > 1 for v in out):
        raise EmbcompressError(f"--energies are shares between 0 and 1, got '{value}'")
    return out


@app.command()
@handle_errors
def sweep(
    model: str = typer.Argument(..., help="Original model: folder, hub id, .gguf, or alias (minilm, smollm2)."),
    methods: str = typer.Option("svd", "--methods", "-m", help="Comma-separated methods (registered ones are used)."),
    ranks: str | None = typer.Option(None, help="Comma-separated ranks, e.g. 32,64,128."),
    energies: str | None = typer.Option(None, help="Comma-separated spectral energy shares, e.g. 0.6,0.8."),
    ratios: str | None = typer.Option(None, help="Comma-separated embedding compression ratios, e.g. 4,8."),
    targets: str = typer.Option("input,output", help="Matrices to replace: input, output or both."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Evaluation text (file, folder, JSONL, parquet)."),
    freq_data: Path | None = typer.Option(None, help="Text for token counts / row weights (default: --data)."),
    text_field: str | None = typer.Option(None, help="Text field / column of JSONL or parquet data."),
    max_tokens: int = typer.Option(2048, help="Causal LM: tokens scored per point."),
    max_docs: int = typer.Option(300, help="Masked LM / encoder: documents per point."),
    seq_len: int = typer.Option(128, help="Window (causal LM) or truncation length."),
    batch_size: int = typer.Option(8, help="Sequences per forward pass."),
    html_out: Path | None = typer.Option(None, "--html", help="Write the quality-vs-bytes page here."),
    save_dir: Path | None = typer.Option(None, help="Also write each point as a checkpoint under this folder."),
    json_out: JsonOut = False,
    gguf_file: GgufFile = None,
    seed: int = typer.Option(0, help="Seed of the fits and of the masking."),
    verbose: Verbose = False,
) -> None:
    """Fit every method x budget of MODEL in memory and compare quality vs bytes against int8/int4."""
    setup_logging(verbose)
    check_html_path(html_out)
    grid = SweepGrid(
        methods=parse_csv(methods),
        ranks=_numbers(ranks, int, "ranks"),
        energies=_numbers(energies, float, "energies"),
        ratios=_numbers(ratios, float, "ratios"),
        targets=parse_csv(targets),
        seed=seed,
    )
    usable, missing = available_methods(grid.methods)
    if not usable:
        raise EmbcompressError(
            f"none of the methods {', '.join(grid.methods)} is registered; available: {', '.join(method_names())}"
        )
    if missing:
        console.print(f"[yellow]skipping method(s) not registered: {', '.join(missing)}[/]")
    if not (grid.ranks or grid.energies or grid.ratios):
        raise EmbcompressError("no budget given; pass --ranks, --energies or --ratios")
    if save_dir is not None and save_dir.exists() and not save_dir.is_dir():
        raise EmbcompressError(f"--save-dir '{save_dir}' exists and is not a folder")
    reporter = RichReporter(enabled=not json_out)
    source, teacher, tokenizer = load_source(model, LoadOptions(gguf_file=gguf_file), reporter)
    options = ReportOptions(
        eval=EvalOptions(max_tokens=max_tokens, max_docs=max_docs, seq_len=seq_len, batch_size=batch_size, seed=seed),
        text_field=text_field,
    )
    evaluation = prepare_evaluation(teacher, tokenizer, data, options, freq_data, reporter)
    save = None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        save = save_dir_writer(save_dir, source, tokenizer)
    result = run_sweep(teacher, grid, evaluation, options, reporter, teacher_name=model, save=save)
    if html_out is not None:
        write_html(html_out, sweep_html(result))
    if json_out:
        sys.stdout.write(report_json(result))
        return

    for table in sweep_tables(result):
        stdout.print(rich_table(table))
    if html_out is not None:
        console.print(f"wrote [bold]{html_out}[/]")
