"""What did compression cost: size, matrix fidelity, behaviour vs the teacher, speed, int8/int4 references.

Entry points: :func:`build_report` (a JSON-ready dict, schema in ``docs/report.md``),
:func:`write_report` (into a checkpoint folder), :func:`to_markdown` / :func:`to_html`, and
:func:`run_sweep` for a grid of methods x budgets.
"""

from __future__ import annotations

from .builder import (
    REPORT_NAME,
    SCHEMA_VERSION,
    Evaluation,
    ReportOptions,
    build_report,
    prepare_evaluation,
    report_json,
    write_report,
)
from .evalset import EvalOptions
from .render import sweep_html, sweep_markdown, to_html, to_markdown
from .sweep import SweepGrid, run_sweep

__all__ = [
    "REPORT_NAME",
    "SCHEMA_VERSION",
    "EvalOptions",
    "Evaluation",
    "ReportOptions",
    "SweepGrid",
    "build_report",
    "prepare_evaluation",
    "report_json",
    "run_sweep",
    "sweep_html",
    "sweep_markdown",
    "to_html",
    "to_markdown",
    "write_report",
]
