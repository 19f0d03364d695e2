"""Quality per language: the same report on several evaluation texts, one per language, and their average.

Texts are named ``LANG=PATH`` (``--data de=de.txt --data ja=ja.txt``), or one folder whose entries are all
subfolders is read as one language per subfolder (what :func:`embcompress.corpora.man_corpus` writes).
The full report is measured on the first language; every other language adds the behaviour of the
student and of each reference quantizer (the sizes and matrices do not depend on the text).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import EmbcompressError
from ..progress import LoggingReporter, Reporter
from .builder import ReportOptions, build_report

#: Metrics shown per language, by task (the first is the one the report compares at a glance).
LANGUAGE_METRICS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("kl", "top1_agreement", "perplexity_ratio"),
    "masked-lm": ("agreement", "kl"),
    "encoder": ("pooled_cosine", "hidden_cosine"),
}


def language_sets(values: list[str] | None) -> dict[str, Path] | None:
    """The evaluation texts by language, or ``None`` for a single unnamed text (the plain report).

    ``values`` are ``LANG=PATH`` or a single ``PATH``; a single folder holding only subfolders is one
    language per subfolder.
    """
    if not values:
        return None
    named = [v for v in values if "=" in v and not Path(v).exists()]
    if not named:
        if len(values) > 1:
            raise EmbcompressError(f"--data given {len(values)} times without names; name each text LANG=PATH")
        folder = Path(values[0]).expanduser()
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        if entries and all(e.is_dir() for e in entries if not e.name.startswith(".")):
            return {e.name: e for e in entries if not e.name.startswith(".")}
        return None
    if len(named) != len(values):
        plain = next(v for v in values if v not in named)
        raise EmbcompressError(f"--data '{plain}' has no language name; name every text LANG=PATH when giving several")
    out: dict[str, Path] = {}
    for value in values:
        name, _, path = value.partition("=")
        if not name or not path:
            raise EmbcompressError(f"--data '{value}' is not LANG=PATH")
        if name in out:
            raise EmbcompressError(f"--data names language '{name}' twice")
        out[name] = Path(path).expanduser()
    return out


def _behaviours(report: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {"student": report.get("behaviour")}
    for ref in report.get("references", []):
        out[ref["name"]] = ref.get("behaviour")
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def language_summary(reports: dict[str, dict[str, Any]], task: str | None) -> dict[str, Any]:
    """Per variant (student, each reference): its bits per weight and each metric per language and averaged."""
    metrics = LANGUAGE_METRICS.get(task or "", ())
    first = next(iter(reports.values()))
    bits = {row["name"]: row["bits_per_weight"] for row in first["glance"]["rows"]}
    rows = []
    for variant in _behaviours(first):
        per_language = {}
        for language, report in reports.items():
            behaviour = _behaviours(report).get(variant) or {}
            per_language[language] = {m: behaviour.get(m) for m in metrics} | {"tokens": behaviour.get("tokens")}
        average = {m: _mean([per_language[lang][m] for lang in reports]) for m in metrics}
        rows.append(
            {"name": variant, "bits_per_weight": bits.get(variant), "languages": per_language, "average": average}
        )
    return {"languages": list(reports), "metrics": list(metrics), "rows": rows}


def build_language_report(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    sets: dict[str, Path],
    options: ReportOptions | None = None,
    reporter: Reporter | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The report on the first language's text with ``languages`` (:func:`language_summary`) and
    ``by_language`` (each language's data and behaviours) added; ``kwargs`` go to :func:`build_report`."""
    options = options or ReportOptions()
    reporter = reporter or LoggingReporter()
    kwargs["reporter"] = reporter
    reports: dict[str, dict[str, Any]] = {}
    for i, (language, path) in enumerate(sets.items()):
        with reporter.stage(f"language {language} ({i + 1}/{len(sets)})"):
            opts = options if i == 0 else ReportOptions.from_dict({**options.to_dict(), "speed": False})
            reports[language] = build_report(student, teacher, tokenizer, path, opts, **kwargs)
    result = dict(next(iter(reports.values())))
    result["languages"] = language_summary(reports, result.get("task"))
    result["by_language"] = {
        language: {"data": report.get("data"), "behaviour": _behaviours(report)} for language, report in reports.items()
    }
    return result
