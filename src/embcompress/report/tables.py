"""The report as plain tables (title, header, rows of strings): one source for rich, markdown and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..sizes import mb
from .buckets import BUCKETS


@dataclass
class TableData:
    """A rendered-agnostic table."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits; ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _direction(higher: bool) -> str:
    return "↑" if higher else "↓"


def glance_table(report: dict[str, Any]) -> TableData:
    """Bytes, every metric the verdict compares, and how the compressed model fares against each variant."""
    g = report["glance"]
    metrics = g.get("metrics") or [{"name": g["metric"], "higher_is_better": g["higher_is_better"]}]
    versus = {c["reference"]: c for c in g.get("comparisons", [])}
    header = ["variant", "embedding bytes", "bits/weight"]
    header += [f"{m['name']} {_direction(m['higher_is_better'])}" for m in metrics]
    title = "At a glance (↑ higher is better, ↓ lower is better)"
    table = TableData(title, [*header, "compressed model vs this"], caption=g["verdict"])
    for row in g["rows"]:
        bpw = row.get("bits_per_weight")
        values = row.get("values") or {g["metric"]: row["value"]}
        cells = [row["name"], mb(row["embedding_bytes"]), "-" if bpw is None else f"{bpw:.2f}"]
        cells += [fmt(values.get(m["name"])) for m in metrics]
        table.rows.append([*cells, versus.get(row["name"], {}).get("summary", "")])
    return table


def _before_after(name: str, detail: str, params: tuple[Any, Any], nbytes: tuple[Any, Any], value: Any) -> list[str]:
    """One size row: parameters and bytes before -> after, and the ratio."""
    return [name, detail, f"{fmt(params[0])} -> {fmt(params[1])}", f"{mb(nbytes[0])} -> {mb(nbytes[1])}", ratio(value)]


def size_table(report: dict[str, Any]) -> TableData:
    size = report["size"]
    table = TableData("Size", ["item", "shape / rank", "params before -> after", "bytes before -> after", "ratio"])
    for m in size["modules"]:
        name = f"{m['path']} ({m['role']})"
        if m["tied"]:
            table.rows.append([name, "tied to the input embedding", "-", "-", "-"])
            continue
        shape = f"{m['shape'][0]}x{m['shape'][1]}" + (f", r={m['rank']}" if m["rank"] else "")
        params, nbytes = (m["params_before"], m["params_after"]), (m["bytes_before"], m["bytes_after"])
        table.rows.append(_before_after(name, shape, params, nbytes, m["ratio"]))
    emb, model = size["embedding"], size["model"]
    params, nbytes = (emb["params_before"], emb["params_after"]), (emb["bytes_before"], emb["bytes_after"])
    table.rows.append(_before_after("embeddings (all)", "", params, nbytes, emb["ratio"]))
    t, s = model["teacher"], model["student"]
    table.rows.append(
        _before_after("whole model", "", (t["params"], s["params"]), (t["bytes"], s["bytes"]), model["ratio"])
    )
    disk_t, disk_s = size["disk"]["teacher"] or {}, size["disk"]["student"] or {}
    if disk_t or disk_s:
        on_disk = f"{mb(disk_t.get('total_bytes'))} -> {mb(disk_s.get('total_bytes'))}"
        table.rows.append(["files on disk", disk_t.get("note", ""), "", on_disk, ""])
    serving = size["serving"]
    extra = serving["student_runtime_extra_bytes"]
    table.rows.append(
        [
            "serving memory (resident)",
            f"incl. {mb(extra)} decoded head" if extra else "",
            "",
            f"{mb(serving['teacher_bytes'])} -> {mb(serving['student_bytes'])}",
            ratio(serving["ratio"]),
        ]
    )
    return table


FIDELITY_KEYS = ("relative_error", "weighted_relative_error", "row_cosine_mean", "row_cosine_min")


def _fid_row(name: str, role: str, fid: dict[str, Any]) -> list[str]:
    if fid.get("tied_to_input"):
        return [name, role, "tied to input", "", "", ""]
    return [name, role, *(fmt(fid[key]) for key in FIDELITY_KEYS)]


def fidelity_table(report: dict[str, Any]) -> TableData:
    table = TableData(
        "Matrix fidelity", ["variant", "matrix", "rel. error", "freq-weighted error", "row cos mean", "row cos min"]
    )
    for name, fidelity in variants(report, "fidelity"):
        table.rows.extend(_fid_row(name, role, fid) for role, fid in fidelity.items())
    return table


def variants(report: dict[str, Any], section: str) -> list[tuple[str, Any]]:
    """``(name, section)`` of the student, then of each quantization reference, where measured (not ``None``)."""
    pairs = [("student", report[section]), *((r["name"], r[section]) for r in report["references"])]
    return [(name, value) for name, value in pairs if value is not None]


def fidelity_bucket_table(report: dict[str, Any]) -> TableData | None:
    fid = report["fidelity"]["input"]
    if not fid.get("by_bucket"):
        return None
    shares = (report.get("data") or {}).get("buckets") or {}
    names = [name for name, _ in variants(report, "fidelity")]
    table = TableData(
        "Input-matrix error by token frequency (rel. error / row cosine)",
        ["bucket", "token ids", "share of occurrences", *names],
    )
    for bucket in BUCKETS:
        row = [bucket, fmt(fid["by_bucket"][bucket]["rows"]), fmt(shares.get(bucket, {}).get("occurrence_share"))]
        for _, f in variants(report, "fidelity"):
            b = f["input"]["by_bucket"][bucket]
            row.append(f"{fmt(b['relative_error'], 3)} / {fmt(b['row_cosine_mean'], 3)}")
        table.rows.append(row)
    return table


BEHAVIOUR_KEYS = {
    "causal-lm": [
        "perplexity_teacher",
        "perplexity_student",
        "perplexity_ratio",
        "kl",
        "top1_agreement",
        "top5_agreement",
        "tokens",
    ],
    "masked-lm": ["accuracy_teacher", "accuracy_student", "agreement", "top5_agreement", "kl", "tokens"],
    "encoder": [
        "hidden_cosine",
        "pooled_cosine",
        "pooled_cosine_min",
        "neighbour_overlap",
        "neighbours_k",
        "documents",
        "tokens",
    ],
}
BUCKET_KEYS = {
    "causal-lm": ["perplexity_ratio", "kl", "top1_agreement"],
    "masked-lm": ["top1_agreement", "kl"],
    "encoder": ["hidden_cosine"],
}


def behaviour_table(report: dict[str, Any]) -> TableData | None:
    if report["behaviour"] is None:
        return None
    measured = variants(report, "behaviour")
    table = TableData(f"Behaviour vs the teacher ({report['task']})", ["metric", *(n for n, _ in measured)])
    for key in BEHAVIOUR_KEYS[report["task"]]:
        table.rows.append([key, *(fmt(b.get(key)) for _, b in measured)])
    return table


def behaviour_bucket_table(report: dict[str, Any]) -> TableData | None:
    beh = report["behaviour"]
    if beh is None or not beh.get("by_bucket"):
        return None
    keys = BUCKET_KEYS[report["task"]]
    table = TableData(
        "Behaviour by frequency bucket of the predicted / input token", ["bucket", "variant", "tokens", *keys]
    )
    for bucket in BUCKETS:
        for name, b in variants(report, "behaviour"):
            row = b["by_bucket"][bucket]
            table.rows.append([bucket, name, fmt(row["tokens"]), *(fmt(row.get(k), 3) for k in keys)])
    return table


def speed_table(report: dict[str, Any]) -> TableData | None:
    speed = report["speed"]
    if speed is None:
        return None
    shape = "x".join(str(d) for d in speed["batch_shape"])
    table = TableData(
        f"Speed (batch {shape}, median of {speed['repeats']}, {speed['threads']} threads)",
        ["part", "teacher ms", "student ms", "student / teacher"],
    )
    for key in ("forward", "embedding_lookup", "lm_head"):
        if speed.get(key):
            p = speed[key]
            table.rows.append([key, f"{p['teacher_ms']:.2f}", f"{p['student_ms']:.2f}", ratio(p["ratio"])])
    return table


def downstream_table(report: dict[str, Any]) -> TableData | None:
    """Spearman with human similarity ratings: the original's, then each variant's and its change."""
    section = report.get("downstream")
    if not section:
        return None
    names = list(section["original"])
    table = TableData(
        "Human-rated similarity (Spearman of cosine vs human ratings; change against the original)",
        ["variant", *names],
        caption="; ".join(f"{name}: {info['description']}" for name, info in section["sets"].items()),
    )
    table.rows.append(["original", *(f"{section['original'][n]:.4f}" for n in names)])
    for row in section["rows"]:
        table.rows.append([row["name"], *(f"{row['spearman'][n]:.4f} ({row['change'][n]:+.4f})" for n in names)])
    return table


def provenance_table(report: dict[str, Any]) -> TableData:
    prov = report["provenance"]
    table = TableData("Provenance", ["field", "value"])
    table.rows += [[who, f"{report[who]['name']} ({report[who]['architecture']})"] for who in ("student", "teacher")]
    table.rows.append(["compressed by embcompress", fmt(prov["compressed"])])
    if prov.get("method"):
        table.rows.append(["method", prov["method"]])
        for m in prov["modules"]:
            tied = f", tied to {m['tied_to']}" if m["tied_to"] else ""
            table.rows.append([f"{m['path']} ({m['role']})", f"{m['method']} r={m['rank']} {m['factor_dtype']}{tied}"])
        table.rows.append(["fit seed", fmt(prov.get("seed"))])
    if prov.get("distillation"):
        table.rows.append(["distillation", str(prov["distillation"])])
    table.rows.append(["report seed", fmt(prov["report_seed"])])
    table.rows.append(["versions", ", ".join(f"{k} {v}" for k, v in sorted(prov["versions"].items()))])
    data = report.get("data")
    if data and data.get("eval"):
        ev = data["eval"]
        table.rows.append(["evaluation text", f"{data['path']}: {ev['sequences']} sequences, {ev['tokens']} tokens"])
    if data and data.get("sentence_embedding"):
        table.rows.append(["sentence embedding", data["sentence_embedding"]])
    if data:
        table.rows.append(["frequency counts", f"{data['freq_path']}: {fmt(data['frequency_tokens'])} tokens"])
    return table


def report_tables(report: dict[str, Any]) -> list[TableData]:
    """All tables of the report, in display order (sections without data are left out)."""
    builders = (
        glance_table,
        language_table,
        size_table,
        fidelity_table,
        fidelity_bucket_table,
        behaviour_table,
        behaviour_bucket_table,
        downstream_table,
        speed_table,
        provenance_table,
    )
    return [t for t in (b(report) for b in builders) if t is not None]


def needs_text_note(report: dict[str, Any]) -> str:
    """One sentence naming the metrics that were skipped for lack of text ('' when none)."""
    if not report["needs_text"]:
        return ""
    return "Not measured (pass --data TEXT): " + ", ".join(report["needs_text"]) + "."


def language_table(report: dict[str, Any]) -> TableData | None:
    """Each variant's primary metrics per language and their average (``None`` for a one-text report)."""
    summary = report.get("languages")
    if not summary or not summary["metrics"]:
        return None
    metrics = summary["metrics"][:2]
    languages = [*summary["languages"], "average"]
    header = ["variant", "bits/weight", *[f"{m} {lang}" for lang in languages for m in metrics]]
    rows = []
    for row in summary["rows"]:
        cells = [row["name"], f"{row['bits_per_weight']:.2f}" if row["bits_per_weight"] else "-"]
        for lang in languages:
            values = row["average"] if lang == "average" else row["languages"][lang]
            cells += ["-" if values.get(m) is None else f"{values[m]:.4g}" for m in metrics]
        rows.append(cells)
    return TableData("Quality per language", header, rows, caption="average: mean over the languages")
