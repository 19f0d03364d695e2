"""``embcompress report``: what compression cost, against the teacher and against int8/int4 quantization."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..checkpoint import load as load_compressed
from ..checkpoint import read_compression_config
from ..data import check_text_files
from ..errors import CheckpointError, EmbcompressError
from ..outputs import atomic_output, check_output
from ..report import EvalOptions, ReportOptions, build_report, report_json, to_html, to_markdown
from ..report.builder import check_vocabularies, read_summary
from ..report.languages import build_language_report, language_sets
from ..report.size import files_on_disk
from ..report.tables import TableData, needs_text_note, report_tables
from ..sources import LoadOptions, input_paths, load_model, load_source, load_tokenizer, resolve_source
from ._common import Overwrite, RichReporter, Verbose, command, console, stdout

FORMATS = ("rich", "json", "markdown")

_eval = EvalOptions.default
_report = ReportOptions.default
_load = LoadOptions.default


def check_html_path(path: Path | None, overwrite: bool = False, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an HTML output that overlaps an input, exists without --overwrite or
    cannot be written."""
    if path is not None:
        check_output(path, overwrite, inputs, kind="file", label="--html")


def write_html(path: Path, text: str, overwrite: bool = False, inputs: Iterable[Path] = ()) -> None:
    """Write ``text`` to ``path`` atomically, through the output guard."""
    with atomic_output(path, overwrite, inputs, kind="file", label="--html") as tmp:
        tmp.write_text(text, encoding="utf-8")


def _is_compressed(folder: Path) -> bool:
    try:
        read_compression_config(folder)
    except CheckpointError:
        return False
    return True


def load_student(name: str, dtype: str, device: str) -> tuple[Any, Any, Path | None]:
    """An embcompress checkpoint (verified load) or any model folder / alias; with its tokenizer and folder."""
    folder, torch_dtype = Path(name).expanduser(), LoadOptions(dtype=dtype).torch_dtype()
    if folder.is_dir() and _is_compressed(folder):
        model = load_compressed(folder, dtype=torch_dtype, device=device)
        return model, load_tokenizer(resolve_source(str(folder))), folder
    source = resolve_source(name)
    model = load_model(source, torch_dtype, device)
    return model, load_tokenizer(source), source.path if source.kind == "local" else None


def default_teacher(student_dir: Path | None) -> str:
    """The ``source`` recorded in the student's ``embcompress.json``."""
    source = (read_summary(student_dir) or {}).get("source")
    if source:
        return str(source)
    raise EmbcompressError("no --teacher given and the student has no embcompress.json naming its source")


def rich_table(data: TableData) -> Table:
    table = Table(title=data.title, caption=data.caption or None, title_justify="left")
    for i, col in enumerate(data.header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in data.rows:
        table.add_row(*row)
    return table


@command
def report(
    student: str = typer.Argument(..., help="Compressed checkpoint folder (or any model folder / alias)."),
    teacher: str | None = typer.Option(
        None, "--teacher", "-t", help="Original model (folder, hub id, .gguf, alias); default: the student's source."
    ),
    data: list[str] | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Evaluation text: file, folder, JSONL or parquet; LANG=PATH (repeatable) or a folder of one subfolder "
        "per language for quality per language and its average.",
    ),
    freq_data: Path | None = typer.Option(None, help="Text for token-frequency buckets (default: --data)."),
    text_field: str | None = typer.Option(_report("text_field"), help="Text field / column of JSONL or parquet data."),
    fmt: str = typer.Option("rich", "--format", "-f", help="Output on stdout: rich, json or markdown."),
    html_out: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report here."),
    max_tokens: int = typer.Option(_eval("max_tokens"), help="Causal LM: tokens scored."),
    max_docs: int = typer.Option(_eval("max_docs"), help="Masked LM / encoder: documents (paragraphs) encoded."),
    seq_len: int = typer.Option(_eval("seq_len"), help="Window (causal LM) or truncation length."),
    batch_size: int = typer.Option(_eval("batch_size"), help="Sequences per forward pass."),
    speed: bool = typer.Option(_report("speed"), help="Measure forward / head / lookup latency."),
    repeats: int = typer.Option(
        _report("speed_repeats"),
        "--repeats",
        "--speed-repeats",
        help="Timed repetitions per latency (median reported).",
    ),
    threads: int | None = typer.Option(
        _report("speed_threads"),
        "--threads",
        "--speed-threads",
        help="Torch CPU threads while timing (default: torch's).",
    ),
    seed: int = typer.Option(_eval("seed"), help="Seed of the masked-LM masking."),
    downstream: bool = typer.Option(
        _report("downstream"),
        "--downstream",
        help="Sentence encoders: Spearman with human similarity ratings (Lee, SimLex-999, WordSim-353; needs gensim).",
    ),
    gguf_file: str | None = typer.Option(_load("gguf_file"), help="GGUF file inside the teacher folder."),
    dtype: str = typer.Option(_load("dtype"), help="Dtype both models are loaded in."),
    device: str = typer.Option(_load("device"), help="Device: cpu, cuda, cuda:N."),
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Report what compressing STUDENT cost against TEACHER: size, fidelity, behaviour, speed, int8/int4."""
    if fmt not in FORMATS:
        raise EmbcompressError(f"unknown --format '{fmt}'; valid: {', '.join(FORMATS)}")
    check_html_path(html_out, overwrite)
    sets = language_sets(data)
    texts: list[Path] = list(sets.values()) if sets else [Path(d).expanduser() for d in data or []]
    for text in (*texts, freq_data):
        if text is not None:
            check_text_files(text)  # a bad file fails now, not after both models are loaded
    inputs: list[Path] = []
    if html_out is not None:
        inputs = [*input_paths(student, paths=[*texts, freq_data]), *input_paths(teacher, gguf_file=gguf_file)]
        check_html_path(html_out, overwrite, inputs)
    options = ReportOptions(
        eval=EvalOptions(max_tokens=max_tokens, max_docs=max_docs, seq_len=seq_len, batch_size=batch_size, seed=seed),
        speed=speed,
        speed_repeats=repeats,
        speed_threads=threads,
        text_field=text_field,
        downstream=downstream,
    )
    reporter = RichReporter(enabled=fmt == "rich")
    with reporter.stage(f"loading {student}"):
        student_model, student_tok, student_dir = load_student(student, dtype, device)
    teacher_name = teacher or default_teacher(student_dir)
    source, teacher_model, teacher_tok = load_source(
        teacher_name, LoadOptions(gguf_file=gguf_file, dtype=dtype, device=device), reporter
    )
    check_vocabularies(student_tok, teacher_tok)
    common: dict[str, Any] = {
        "freq_data": freq_data,
        "student_dir": student_dir,
        "student_name": student,
        "teacher_name": teacher_name,
        "teacher_disk": files_on_disk(source.path, source.gguf_file) if source.kind != "hub" else None,
        "reporter": reporter,
    }
    tokenizer = teacher_tok or student_tok
    if sets:
        result = build_language_report(student_model, teacher_model, tokenizer, sets, options, **common)
    else:
        result = build_report(student_model, teacher_model, tokenizer, texts[0] if texts else None, options, **common)
    if html_out is not None:
        inputs += input_paths(teacher_name, gguf_file=gguf_file)
        write_html(html_out, to_html(result), overwrite, inputs)
    emit(result, fmt)
    if html_out is not None and fmt == "rich":
        console.print(f"wrote [bold]{html_out}[/]")


def emit(result: dict[str, Any], fmt: str) -> None:
    """Print the report on stdout in ``fmt``."""
    if fmt == "json":
        sys.stdout.write(report_json(result))
    elif fmt == "markdown":
        sys.stdout.write(to_markdown(result))
    else:
        stdout.print(f"[bold]{result['glance']['verdict']}[/]")
        note = needs_text_note(result)
        if note:
            stdout.print(f"[yellow]{note}[/]")
        for table in report_tables(result):
            stdout.print(rich_table(table))
