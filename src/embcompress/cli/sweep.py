"""``embcompress sweep``: methods x budgets in memory; quality vs bytes with the Pareto front and int8/int4."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ..data import check_text_files
from ..outputs import atomic_output, check_output
from ..report import ReportOptions, SweepGrid, prepare_evaluation, report_json, run_sweep, sweep_html
from ..report.render import sweep_tables
from ..report.sweep import SWEEP_EVAL, available_methods, save_dir_writer
from ..sources import LoadOptions, input_paths, load_source
from ._common import (
    GgufFile,
    JsonOut,
    Overwrite,
    RichReporter,
    Verbose,
    command,
    console,
    parse_csv,
    parse_numbers,
    stdout,
)
from .report import check_html_path, rich_table, write_html

_grid = SweepGrid.default
_eval = SWEEP_EVAL


@command
def sweep(
    model: str = typer.Argument(..., help="Original model: folder, hub id, .gguf, or alias (minilm, smollm2, gemma3)."),
    methods: str = typer.Option(
        ",".join(_grid("methods")), "--methods", "-m", help="Comma-separated methods (registered ones are used)."
    ),
    ranks: str | None = typer.Option(None, help="Comma-separated ranks, e.g. 32,64,128."),
    energies: str | None = typer.Option(None, help="Comma-separated spectral energy shares, e.g. 0.6,0.8."),
    ratios: str | None = typer.Option(None, help="Comma-separated embedding compression ratios, e.g. 4,8."),
    targets: str = typer.Option(",".join(_grid("targets")), help="Matrices to replace: input, output or both."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Evaluation text (file, folder, JSONL, parquet)."),
    freq_data: Path | None = typer.Option(None, help="Text for token counts / row weights (default: --data)."),
    text_field: str | None = typer.Option(
        ReportOptions.default("text_field"), help="Text field / column of JSONL or parquet data."
    ),
    max_tokens: int = typer.Option(_eval.max_tokens, help="Causal LM: tokens scored per point."),
    max_docs: int = typer.Option(_eval.max_docs, help="Masked LM / encoder: documents per point."),
    seq_len: int = typer.Option(_eval.seq_len, help="Window (causal LM) or truncation length."),
    batch_size: int = typer.Option(_eval.batch_size, help="Sequences per forward pass."),
    html_out: Path | None = typer.Option(None, "--html", help="Write the quality-vs-bytes page here."),
    save_dir: Path | None = typer.Option(None, help="Also write each point as a checkpoint under this folder."),
    json_out: JsonOut = False,
    gguf_file: GgufFile = None,
    seed: int = typer.Option(_grid("seed"), help="Seed of the fits and of the masking."),
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Fit every method x budget of MODEL in memory and compare quality vs bytes against int8/int4."""
    check_html_path(html_out, overwrite)
    if save_dir is not None:
        check_output(save_dir, overwrite, label="--save-dir")
    for text in (data, freq_data):
        if text is not None:
            check_text_files(text)
    inputs: list[Path] = []
    if html_out is not None or save_dir is not None:
        inputs = input_paths(model, paths=[data, freq_data], gguf_file=gguf_file)
        check_html_path(html_out, overwrite, inputs)
    if save_dir is not None:
        check_output(save_dir, overwrite, inputs, label="--save-dir")
    grid = SweepGrid(
        methods=parse_csv(methods),
        ranks=parse_numbers(ranks, int, "ranks"),
        energies=parse_numbers(energies, float, "energies"),
        ratios=parse_numbers(ratios, float, "ratios"),
        targets=parse_csv(targets),
        seed=seed,
    )
    _, missing = available_methods(grid.methods)
    if missing:
        console.print(f"[yellow]skipping method(s) not registered: {', '.join(missing)}[/]")
    options = ReportOptions(
        eval=dataclasses.replace(
            _eval, max_tokens=max_tokens, max_docs=max_docs, seq_len=seq_len, batch_size=batch_size, seed=seed
        ),
        text_field=text_field,
    )
    reporter = RichReporter(enabled=not json_out)
    source, teacher, tokenizer = load_source(model, LoadOptions(gguf_file=gguf_file), reporter)
    evaluation = prepare_evaluation(teacher, tokenizer, data, options, freq_data, reporter)
    with contextlib.ExitStack() as stack:
        save = None
        if save_dir is not None:
            staging = stack.enter_context(atomic_output(save_dir, overwrite, inputs, label="--save-dir"))
            save = _saver(staging, save_dir, source, tokenizer)
        result = run_sweep(teacher, grid, evaluation, options, reporter, teacher_name=model, save=save)
    if html_out is not None:
        write_html(html_out, sweep_html(result), overwrite, inputs)
    if json_out:
        sys.stdout.write(report_json(result))
        return

    for table in sweep_tables(result):
        stdout.print(rich_table(table))
    if html_out is not None:
        console.print(f"wrote [bold]{html_out}[/]")


def _saver(staging: Path, final: Path, source: Any, tokenizer: Any) -> Callable[..., Path]:
    """The sweep's ``save`` callback: checkpoints go into the staging copy of --save-dir, results name
    their final place (the staging copy becomes --save-dir only when the sweep succeeds)."""
    write = save_dir_writer(staging, source, tokenizer)

    def save(model: Any, name: str, summary: dict[str, Any]) -> Path:
        write(model, name, summary)
        return final / name

    return save
