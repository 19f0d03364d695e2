"""Matplotlib figures rendered to inline SVG text (the HTML stays one self-contained file)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .buckets import BUCKETS
from .tables import variants


def to_svg(fig: Figure, grid_axis: str = "both") -> str:
    """The figure, with a grid and a legend on every axes, as an ``<svg>`` element (XML prolog stripped);
    the figure is closed."""
    for ax in fig.axes:
        ax.grid(axis=grid_axis, alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def spectrum_figure(spectrum: dict[str, Any]) -> str | None:
    """Singular values (log scale) and cumulative energy of each original matrix, with the student's rank."""
    if not spectrum:
        return None
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 3.6))
    for role, spec in spectrum.items():
        ranks = range(1, len(spec["singular_values"]) + 1)
        ax_s.semilogy(ranks, spec["singular_values"], label=f"{role} matrix")
        ax_e.plot(ranks, spec["energy"], label=f"{role} matrix")
        if spec.get("rank"):
            for ax in (ax_s, ax_e):
                ax.axvline(spec["rank"], color="tab:red", linestyle="--", linewidth=1)
            kept = spec["energy"][min(spec["rank"], len(spec["energy"])) - 1]
            ax_e.annotate(
                f"r={spec['rank']}: {kept:.0%}",
                (spec["rank"], kept),
                textcoords="offset points",
                xytext=(6, -12),
                color="tab:red",
            )
    ax_s.set(title="Singular values", xlabel="index", ylabel="singular value")
    ax_e.set(title="Energy kept by rank", xlabel="rank", ylabel="share of squared Frobenius norm", ylim=(0, 1.02))
    return to_svg(fig)


def _grouped_bars(title: str, ylabel: str, series: dict[str, list[float | None]], log: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(BUCKETS))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(BUCKETS))], list(BUCKETS))
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    return to_svg(fig, grid_axis="y")


def bucket_error_figure(report: dict[str, Any]) -> str | None:
    """Relative error of the input matrix per frequency bucket: student vs the quantization references."""
    if not report["fidelity"]["input"].get("by_bucket"):
        return None
    series = {
        name: [f["input"]["by_bucket"][b]["relative_error"] for b in BUCKETS]
        for name, f in variants(report, "fidelity")
    }
    return _grouped_bars("Input-matrix relative error by token frequency", "relative error", series)


def bucket_behaviour_figure(report: dict[str, Any]) -> str | None:
    """The task's per-bucket behaviour metric (KL for LMs, hidden-state cosine for encoders)."""
    beh = report["behaviour"]
    if beh is None or not beh.get("by_bucket"):
        return None
    key = "hidden_cosine" if report["task"] == "encoder" else "kl"
    series = {name: [b["by_bucket"][k].get(key) for k in BUCKETS] for name, b in variants(report, "behaviour")}
    label = "hidden-state cosine to the teacher" if key == "hidden_cosine" else "KL(teacher || variant), nats"
    return _grouped_bars(f"Behaviour by frequency bucket ({key})", label, series, log=key == "kl")


def _xy(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Embedding megabytes and metric values of sweep points (the axes of the quality-vs-size plot)."""
    return [p["embedding_bytes"] / 1e6 for p in points], [p["value"] for p in points]


def _labelled(
    ax: Any, points: list[dict[str, Any]], key: str, size: int, offset: tuple[int, int], **style: Any
) -> None:
    """Scatter ``points`` drawn with ``style`` and write each point's ``key`` beside it."""
    ax.scatter(*_xy(points), **style)
    for p, xy in zip(points, zip(*_xy(points), strict=True), strict=True):
        ax.annotate(p[key], xy, fontsize=size, xytext=offset, textcoords="offset points")


def pareto_figure(sweep: dict[str, Any]) -> str:
    """Quality vs embedding bytes for every sweep point, the Pareto front, and the int8/int4 points."""
    metric, higher = sweep["metric"], sweep["higher_is_better"]
    fig, ax = plt.subplots(figsize=(9, 5))
    methods = sorted({p["method"] for p in sweep["points"] if p.get("value") is not None})
    for marker, method in zip("osD^v<>ph", methods, strict=False):
        pts = [p for p in sweep["points"] if p["method"] == method and p.get("value") is not None]
        _labelled(ax, pts, "label", 7, (3, 3), marker=marker, label=method)
    refs = [r for r in sweep["references"] if r.get("value") is not None]
    _labelled(ax, refs, "method", 9, (4, -10), marker="*", s=160, color="black", label="per-row quantization", zorder=3)
    front = sorted(
        (p for p in sweep["points"] + sweep["references"] if p.get("pareto")), key=lambda p: p["embedding_bytes"]
    )
    if front:
        ax.step(*_xy(front), where="post", color="tab:red", linewidth=1.2, label="Pareto front")
    ax.axvline(sweep["original_bytes"] / 1e6, color="grey", linestyle=":", label="original size")
    values = [p["value"] for p in sweep["points"] + refs if p.get("value") is not None]
    if not higher and values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")  # perplexity ratios span decades
    ax.set(
        xlabel="embedding bytes (MB)",
        ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)",
        title="Quality vs size",
    )
    return to_svg(fig)
