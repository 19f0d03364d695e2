"""Quality on any text: ``embcompress compress`` against the quantizers people deploy, on three kinds of English.

For each packaged checkpoint (MiniLM, SmolLM2) this runs the real library pipeline
(:func:`embcompress.compress_model`, the code behind the CLI) at each ratio, in the default
(text-independent transform code) mode and, for comparison, in ``--domain`` mode with token counts
from the train side of a 90/10 hash split of the Python docs. Every variant is measured with the
report's own code on three corpora it never saw:

* ``pydocs``: the held-out 10% of Debian's Python 3.11 docs (``python3.11-doc``);
* ``fortunes``: Debian's ``fortunes`` quotations and jokes;
* ``debian``: Debian package descriptions (``apt-cache dumpavail``).

References: per-row int8, Q8_0, Q4_0 (4.5 bits/weight), NF4 (blocks of 64), per-row int4; bytes as stored.
Metrics: SmolLM2 KL(original || compressed) per token and top-1 agreement on 4096 tokens per corpus;
MiniLM mean cosine of the sentence embeddings to the original's and top-10 neighbour overlap on 1000
paragraphs per corpus. Targets (issue #10): at <= per-row int4's bytes (8x) better than Q4_0 everywhere;
at <= 2.9 bits/weight (11x) better than per-row int4 everywhere; 16x reported.

    nice -n 5 python benchmarks/quality_anytext.py                  # both models, 8x / 11x / 16x, about 25 min
    nice -n 5 python benchmarks/quality_anytext.py --models minilm --ratios 8 --time-cli

Prints JSON on stdout and writes benchmarks/results/quality_anytext[_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distill_common import PYDOCS, WORK, machine, write_results
from quality_per_byte import fortunes, write_docs

from embcompress import CompressOptions, LoadOptions, compress_model, load_source
from embcompress.data import iter_documents, split_documents
from embcompress.progress import LoggingReporter
from embcompress.report import EvalOptions, ReportOptions, prepare_evaluation
from embcompress.report.behaviour import compare
from embcompress.report.builder import matrix_pairs, reference_rows

logger = logging.getLogger("quality_anytext")
METRICS = {
    "smollm2": (("kl", False), ("top1_agreement", True)),
    "minilm": (("pooled_cosine", True), ("neighbour_overlap", True)),
}
CORPORA = ("pydocs", "fortunes", "debian")
HELDOUT = 0.1


def debian_descriptions(limit: int = 4000) -> list[str]:
    """Package descriptions from ``apt-cache dumpavail`` (the synopsis, and the long text where the lists
    carry it), at least 8 words each, spread evenly over the archive's alphabetical order."""
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    out: list[str] = []
    for record in text.split("\n\n"):
        lines = record.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Description:")), None)
        if start is None:
            continue
        body = [lines[start].removeprefix("Description:").strip()]
        for line in lines[start + 1 :]:
            if not line.startswith(" "):
                break
            if line.strip() != ".":
                body.append(line.strip())
        doc = " ".join(" ".join(body).split())
        if len(doc.split()) >= 8 and doc not in out[-50:]:
            out.append(doc)
    return out[:: max(1, len(out) // limit)][:limit]


def corpora(work: Path) -> dict[str, Path]:
    """``train`` (the --domain counts and --data) and the three evaluation corpora as text files."""
    work.mkdir(parents=True, exist_ok=True)
    return {
        "train": write_docs(work / "train.txt", split_documents(iter_documents(PYDOCS), "train", HELDOUT)),
        "pydocs": write_docs(work / "pydocs.txt", split_documents(iter_documents(PYDOCS), "heldout", HELDOUT)),
        "fortunes": write_docs(work / "fortunes.txt", fortunes()),
        "debian": write_docs(work / "debian.txt", debian_descriptions()),
    }


def report_options() -> ReportOptions:
    return ReportOptions(eval=EvalOptions(max_tokens=4096, max_docs=1000), speed=False)


def pick(behaviour: dict[str, Any] | None, model: str) -> dict[str, float | None]:
    return {m: (behaviour or {}).get(m) for m, _ in METRICS[model]}


def references(model: str, teacher: Any, evaluations: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployed quantizers, measured per corpus with the report's reference code."""
    rows: dict[str, dict[str, Any]] = {}
    for corpus, ev in evaluations.items():
        for ref in reference_rows(teacher, matrix_pairs(teacher, teacher), ev, report_options(), LoggingReporter()):
            row = rows.setdefault(ref["name"], {"variant": ref["name"], "bytes": ref["embedding_bytes"]})
            row[corpus] = pick(ref["behaviour"], model)
    return list(rows.values())


def variant_row(
    model: str, ratio: float, domain: bool, teacher: Any, tokenizer: Any, files: dict[str, Path], evaluations: dict
) -> dict[str, Any]:
    """Compress a copy of the teacher at ``ratio`` and measure it on every corpus."""
    student = copy.deepcopy(teacher)
    options = CompressOptions(ratio=ratio, domain=domain, data=str(files["train"]), distill=False, report=False)
    start = time.perf_counter()
    result = compress_model(student, tokenizer, options, model)
    row: dict[str, Any] = {
        "variant": f"compress --ratio {ratio:g}" + (" --domain" if domain else ""),
        "ratio": ratio,
        "layout": result.layout,
        "bytes": result.embedding_bytes,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for corpus, ev in evaluations.items():
        row[corpus] = pick(compare(student, ev.teacher, ev.buckets, ev.special_ids), model)
    logger.info("%s %s", model, json.dumps(row))
    return row


def run_model(model: str, ratios: list[float], domain_ratios: list[float], files: dict[str, Path]) -> dict[str, Any]:
    _, teacher, tokenizer = load_source(model, LoadOptions())
    dense = teacher.get_input_embeddings().weight
    evaluations = {c: prepare_evaluation(teacher, tokenizer, files[c], report_options()) for c in CORPORA}
    rows = references(model, teacher, evaluations)
    rows += [variant_row(model, r, False, teacher, tokenizer, files, evaluations) for r in ratios]
    rows += [variant_row(model, r, True, teacher, tokenizer, files, evaluations) for r in domain_ratios]
    entries = dense.numel()
    for row in rows:
        row["bits_per_weight"] = round(8 * row["bytes"] / entries, 3)
    return {"shape": list(dense.shape), "rows": rows, "verdicts": verdicts(model, rows)}


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def verdicts(model: str, rows: list[dict[str, Any]]) -> list[str]:
    """Per target (issue #10): 8x (<= int4's bytes) against Q4_0, 11x and 16x against per-row int4; met, or
    the exact distance per corpus and metric."""
    refs = {r["variant"]: r for r in rows}
    lines = []
    for row in (r for r in rows if r["variant"].startswith("compress") and "--domain" not in r["variant"]):
        bpw = row["bits_per_weight"]
        ref_name = "q4_0" if row["ratio"] < 10 else "int4"
        if ref_name == "q4_0" and row["bytes"] > refs["int4"]["bytes"]:
            lines.append(f"{row['variant']}: {row['bytes']:,} bytes is above int4's: the 8x target does not apply")
            continue
        misses = []
        for corpus in CORPORA:
            for metric, higher in METRICS[model]:
                value, ref = row[corpus][metric], refs[ref_name][corpus][metric]
                if not _better(value, ref, higher):
                    misses.append(f"{corpus} {metric} {value:.4f} vs {ref:.4f}")
        verdict = "MET on every corpus and metric" if not misses else "NOT met: " + "; ".join(misses)
        lines.append(f"{row['variant']} ({bpw} bits/weight) vs {ref_name}: {verdict}")
    return lines


def time_cli(files: dict[str, Path]) -> dict[str, Any]:
    """Wall clock of the README's default command: ``embcompress compress minilm --ratio 8 --data ...``."""
    out = WORK / "anytext-cli-minilm-8x"
    cmd = [sys.executable, "-m", "embcompress", "compress", "minilm", "--ratio", "8", "--data", str(PYDOCS)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "-o", str(out), "--overwrite", "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return {"command": " ".join(cmd[2:]) + " -o OUT", "seconds": round(seconds, 1)}


def markdown(results: dict[str, Any]) -> str:
    out = ["# Quality on any text (benchmarks/quality_anytext.py)", "", results["note"], ""]
    for model, data in results["models"].items():
        metrics = [m for m, _ in METRICS[model]]
        head = ["variant", "MB", "bits/w"] + [f"{c} {m}" for c in CORPORA for m in metrics]
        out += [f"## {model} ({data['shape'][0]} x {data['shape'][1]})", "", "| " + " | ".join(head) + " |"]
        out.append("|" + "---|" * len(head))
        for row in data["rows"]:
            cells = [row["variant"], f"{row['bytes'] / 1e6:.2f}", f"{row['bits_per_weight']:.2f}"]
            cells += [f"{row[c][m]:.4f}" for c in CORPORA for m in metrics]
            out.append("| " + " | ".join(cells) + " |")
        out += [""] + [f"- {line}" for line in data["verdicts"]] + [""]
        layouts = [f"- `{r['variant']}`: {r['layout']} ({r['seconds']} s)" for r in data["rows"] if "layout" in r]
        out += ["Layouts and compress times (2 CPU cores):", "", *layouts, ""]
    if "cli" in results:
        out += [f"Default command `{results['cli']['command']}`: {results['cli']['seconds']} s wall clock.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--ratios", default="8,11,16", help="Default-mode ratios (comma list).")
    parser.add_argument("--domain-ratios", default="8", help="--domain ratios for comparison ('' for none).")
    parser.add_argument("--time-cli", action="store_true", help="Also time the README's default MiniLM command.")
    parser.add_argument("--tag", default=None, help="Suffix of the result files.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    files = corpora(WORK / "anytext-corpora")
    ratios = [float(r) for r in args.ratios.split(",") if r]
    domain_ratios = [float(r) for r in args.domain_ratios.split(",") if r]
    results: dict[str, Any] = {"machine": machine(), "ratios": ratios, "domain_ratios": domain_ratios, "models": {}}
    results["note"] = (
        "No distillation. Default mode (transform code) uses no text; --domain counts tokens on the train side of a "
        "90/10 hash split of the Python docs. Measured on the held-out 10% (pydocs), Debian fortunes and Debian "
        "package descriptions. MB = stored embedding bytes (a tied matrix once), bits/w = 8 * bytes / entries."
    )
    for model in args.models.split(","):
        results["models"][model] = run_model(model, ratios, domain_ratios, files)
    if args.time_cli:
        results["cli"] = time_cli(files)
    name = "quality_anytext" + (f"_{args.tag}" if args.tag else "")
    write_results(name, results, markdown(results))


if __name__ == "__main__":
    main()
