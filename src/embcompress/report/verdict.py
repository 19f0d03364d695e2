"""One verdict over every metric: the student against each quantization reference, bytes included.

The headline never reads one metric alone. Each reference is compared with the student on every
quality metric the report shows (behaviour with text; matrix fidelity without), at the precision the
tables print, so the sentence and the table cannot disagree: ``better on all``, ``worse on all``, or
which metrics go which way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Behaviour metrics compared per task, primary first: (key, higher is better). Everything else the
#: behaviour table shows is a count, the teacher's own value, or (``perplexity_student``) ordered exactly
#: as ``perplexity_ratio`` is; :data:`NOT_COMPARED` lists those.
BEHAVIOUR_METRICS: dict[str, tuple[tuple[str, bool], ...]] = {
    "causal-lm": (("kl", False), ("perplexity_ratio", False), ("top1_agreement", True), ("top5_agreement", True)),
    "masked-lm": (("agreement", True), ("top5_agreement", True), ("kl", False), ("accuracy_student", True)),
    "encoder": (
        ("pooled_cosine", True),
        ("neighbour_overlap", True),
        ("hidden_cosine", True),
        ("pooled_cosine_min", True),
    ),
}
NOT_COMPARED = {"tokens", "documents", "neighbours_k", "perplexity_teacher", "accuracy_teacher", "perplexity_student"}
#: Matrix-fidelity metrics compared when no text was given (input matrix first).
FIDELITY_METRICS: tuple[tuple[str, bool], ...] = (
    ("relative_error", False),
    ("weighted_relative_error", False),
    ("row_cosine_mean", True),
    ("row_cosine_min", True),
)
#: Significant digits the tables print; values equal at this precision are a tie.
DIGITS = 4


@dataclass(frozen=True)
class Metric:
    """One compared number: its label, where it sits in a variant (section, keys...) and its direction."""

    name: str
    path: tuple[str, ...]
    higher_is_better: bool

    def value(self, variant: dict[str, Any]) -> float | None:
        """The number in ``variant`` (the report or one of its references), ``None`` where not measured."""
        node: Any = variant
        for key in self.path:
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def compared_metrics(report: dict[str, Any]) -> list[Metric]:
    """Every metric the verdict compares for ``report``: its behaviour metrics when text was measured,
    else the fidelity of each stored matrix; only those the student has a value for."""
    task = report.get("task")
    if report.get("behaviour") is not None and task in BEHAVIOUR_METRICS:
        metrics = [Metric(key, ("behaviour", key), higher) for key, higher in BEHAVIOUR_METRICS[task]]
    else:
        roles = [role for role, fid in report["fidelity"].items() if not fid.get("tied_to_input")]
        metrics = [
            Metric(key if role == "input" else f"{role} {key}", ("fidelity", role, key), higher)
            for role in roles
            for key, higher in FIDELITY_METRICS
        ]
    return [m for m in metrics if m.value(report) is not None]


def _shown(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")


@dataclass
class Comparison:
    """The student against one reference: which metrics are better, worse or tied, and the bytes."""

    reference: str
    bytes: str  # the reference's bytes against the student's: "fewer", "equal" or "more"
    better: list[str] = field(default_factory=list)
    worse: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """``better`` (on none worse), ``worse`` (on none better), ``tied`` (on all) or ``mixed``."""
        if self.better and self.worse:
            return "mixed"
        if self.better:
            return "better"
        return "worse" if self.worse else "tied"

    def summary(self) -> str:
        """A table cell: ``better on all 4``, ``worse on all 4``, or which metrics go which way."""
        count = len(self.better) + len(self.worse) + len(self.tied)
        if self.outcome in ("better", "worse") and not self.tied:
            return f"{self.outcome} on all {count}"
        if self.outcome == "tied":
            return f"equal on all {count}"
        groups = (("better", self.better), ("worse", self.worse), ("equal", self.tied))
        return "; ".join(f"{word} on {', '.join(names)}" for word, names in groups if names)

    def to_dict(self) -> dict[str, Any]:
        keys = ("reference", "bytes", "better", "worse", "tied")
        return {**{k: getattr(self, k) for k in keys}, "outcome": self.outcome, "summary": self.summary()}


def compare_variants(
    metrics: list[Metric], student: dict[str, Any], reference: dict[str, Any], name: str, byte_counts: tuple[int, int]
) -> Comparison:
    """Compare ``student`` with ``reference`` on every metric both have (``byte_counts``: student's, reference's)."""
    s_bytes, r_bytes = byte_counts
    side = "fewer" if r_bytes < s_bytes else "more" if r_bytes > s_bytes else "equal"
    result = Comparison(name, side)
    for metric in metrics:
        s, r = metric.value(student), metric.value(reference)
        if s is None or r is None:
            continue
        if _shown(s) == _shown(r):
            result.tied.append(metric.name)
        elif (s > r) == metric.higher_is_better:
            result.better.append(metric.name)
        else:
            result.worse.append(metric.name)
    return result


def _names(comparisons: list[Comparison]) -> str:
    return " and ".join(c.reference for c in comparisons)


def headline(comparisons: list[Comparison]) -> str:
    """One sentence over all references and all metrics (see the module docstring)."""
    measured = [c for c in comparisons if c.better or c.worse or c.tied]
    if not measured:
        return "no comparison available"

    def pick(outcomes: tuple[str, ...], sides: tuple[str, ...]) -> list[Comparison]:
        return [c for c in measured if c.outcome in outcomes and c.bytes in sides]

    parts = []
    if lost := pick(("worse", "tied"), ("fewer", "equal")):
        parts.append(
            f"{_names(lost)} quantization is at least as good on every metric at no more bytes: "
            "the compression did not pay off"
        )
    if won := pick(("better",), ("more", "equal")):
        parts.append(f"the compressed model beats {_names(won)} quantization on every metric at equal or fewer bytes")
    if matched := pick(("tied",), ("more",)):
        parts.append(f"the compressed model matches {_names(matched)} quantization on every metric at fewer bytes")
    for c in pick(("mixed",), ("fewer", "equal", "more")):
        where = {"fewer": "at fewer bytes", "equal": "at the same bytes", "more": "at more bytes"}[c.bytes]
        parts.append(
            f"against {c.reference} quantization ({where}) the compressed model is better on "
            f"{', '.join(c.better)} but worse on {', '.join(c.worse)}"
        )
    if larger := pick(("worse",), ("more",)):
        parts.append(f"{_names(larger)} quantization is better on every metric at more bytes")
    if smaller := pick(("better",), ("fewer",)):
        parts.append(f"the compressed model is better than {_names(smaller)} quantization on every metric but larger")
    return "; ".join(parts)
