"""Render a report (or a sweep) dict as markdown or as one self-contained HTML file."""

from __future__ import annotations

import html
from typing import Any

from .plots import bucket_behaviour_figure, bucket_error_figure, pareto_figure, spectrum_figure
from .tables import TableData, glance_table, needs_text_note, report_tables

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}caption{caption-side:bottom;text-align:left;
padding-top:4px;color:#444}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em}.note{color:#a33}
.verdict{font-size:1.1em;font-weight:600;margin:0.5em 0 1em}svg{max-width:100%;height:auto}
"""


def table_markdown(table: TableData) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"_{table.caption}_"]
    return "\n".join(lines) + "\n"


def glance_markdown(report: dict[str, Any]) -> str:
    """The at-a-glance table (the model against int8/int4 and the teacher) with the text it was measured on."""
    data = report.get("data") or {}
    if report.get("behaviour") is None:
        return (
            "No evaluation text was given, so only sizes and matrix errors were measured; run\n"
            "`embcompress report THIS_FOLDER --data YOUR_TEXT` before shipping."
        )
    where_text = ", ".join(f"{k}={v}" for k, v in sorted((data.get("eval") or {}).items()))
    return f"Held-out text: `{data.get('path')}` ({where_text}).\n\n{table_markdown(glance_table(report))}"


def title_of(report: dict[str, Any]) -> str:
    return f"embcompress report: {report['student']['name']} vs {report['teacher']['name']}"


def to_markdown(report: dict[str, Any]) -> str:
    """The report tables as GitHub-flavoured markdown."""
    parts = [f"# {title_of(report)}", "", f"**{report['glance']['verdict']}**", ""]
    note = needs_text_note(report)
    if note:
        parts += [note, ""]
    parts += [table_markdown(t) for t in report_tables(report)]
    return "\n".join(parts)


def table_html(table: TableData) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return f"<h2>{html.escape(table.title)}</h2><table>{caption}<tr>{head}</tr>{body}</table>"


def _page(title: str, body: list[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>\n"
    )


def to_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: the tables and inline SVG plots (spectrum, error by frequency)."""
    body = [f'<p class="verdict">{html.escape(report["glance"]["verdict"])}</p>']
    note = needs_text_note(report)
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    body += [table_html(t) for t in report_tables(report)]
    figures = [
        ("Spectrum of the original matrices", spectrum_figure(report["spectrum"])),
        ("Error by token frequency", bucket_error_figure(report)),
        ("Behaviour by token frequency", bucket_behaviour_figure(report)),
    ]
    body += [f"<h2>{html.escape(title)}</h2><figure>{svg}</figure>" for title, svg in figures if svg]
    return _page(title_of(report), body)


def sweep_tables(sweep: dict[str, Any]) -> list[TableData]:
    """One row per grid point and per quantization reference."""
    metric = sweep["metric"]
    table = TableData(
        f"Sweep of {sweep['teacher']} ({sweep['task'] or 'no text'})",
        ["method", "budget", "rank", "embedding MB", "ratio", "rel. error", metric, "Pareto", "fit s", "error"],
    )
    rows = sorted(sweep["points"] + sweep["references"], key=lambda p: (p["method"], p["embedding_bytes"] or 0))
    for p in rows:
        table.rows.append(
            [
                p["method"],
                p["label"],
                str(p.get("rank") or "-"),
                "-" if p["embedding_bytes"] is None else f"{p['embedding_bytes'] / 1e6:.4g}",
                "-" if p.get("ratio") is None else f"{p['ratio']:.2f}x",
                "-" if p.get("relative_error") is None else f"{p['relative_error']:.4g}",
                "-" if p.get("value") is None else f"{p['value']:.4g}",
                "yes" if p.get("pareto") else "",
                "-" if p.get("fit_seconds") is None else f"{p['fit_seconds']:.2f}",
                p.get("error") or "",
            ]
        )
    return [table]


def sweep_markdown(sweep: dict[str, Any]) -> str:
    return "\n".join([f"# embcompress sweep: {sweep['teacher']}", "", *map(table_markdown, sweep_tables(sweep))])


def sweep_html(sweep: dict[str, Any]) -> str:
    """Self-contained HTML: quality-vs-bytes plot (Pareto front, quantization points) and the table."""
    body = [f"<figure>{pareto_figure(sweep)}</figure>", *map(table_html, sweep_tables(sweep))]
    return _page(f"embcompress sweep: {sweep['teacher']}", body)
