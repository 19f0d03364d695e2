"""Quality on any text: ``embcompress compress`` against the quantizers people deploy, on three kinds of English.

For each packaged checkpoint (MiniLM, SmolLM2) this runs the CLI as a user does
(``embcompress --threads T compress MODEL --ratio R --seed S --no-distill``) at each ratio, three calibration
seeds at the first ratio and a second thread count (which must write the same bytes), reloads each written
checkpoint with ``import embcompress`` + ``AutoModel*.from_pretrained`` and measures it with the report's own
code on three corpora it never saw:

* ``pydocs``: the held-out 10% of Debian's Python 3.11 docs (``python3.11-doc``);
* ``fortunes``: Debian's ``fortunes`` quotations and jokes;
* ``debian``: Debian package descriptions (``apt-cache dumpavail``).

References: per-row int8, Q8_0, Q4_0 (4.5 bits/weight), NF4 (blocks of 64), per-row int4; bytes as stored.
Metrics: SmolLM2 KL(original || compressed) per token and top-1 agreement on 4096 tokens per corpus;
MiniLM mean cosine of the sentence embeddings to the original's and top-10 neighbour overlap on 1000
paragraphs per corpus. Targets (issues #10, #23, #24): at <= per-row int4's bytes (8x) better than Q4_0
everywhere, for every seed; at <= 2.9 bits/weight (11x) better than per-row int4 everywhere; 16x reported.

    nice -n 5 python benchmarks/quality_anytext.py            # both models, 8x (3 seeds, 2 thread counts) / 11x / 16x
    nice -n 5 python benchmarks/quality_anytext.py --models minilm --ratios 8 --seeds 0 --threads 2 --time-cli

Prints JSON on stdout and writes benchmarks/results/quality_anytext[_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import transformers
from distill_common import PYDOCS, WORK, machine, write_results
from quality_per_byte import fortunes, write_docs

import embcompress  # noqa: F401  (registers the compressed format with transformers, as a user's import does)
from embcompress import LoadOptions, load_source
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
#: --reuse: keep checkpoints an earlier run of this benchmark wrote (their recorded CLI time included).
REUSE = False


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


#: --references: the deployed quantizers measured (all of the report's by default).
REFERENCES: tuple[str, ...] = ("int8", "q8_0", "q4_0", "nf4", "int4")


def report_options() -> ReportOptions:
    return ReportOptions(eval=EvalOptions(max_tokens=4096, max_docs=1000), speed=False, references=REFERENCES)


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


def cli_checkpoint(model: str, ratio: float, seed: int, threads: int, domain: bool, files: dict[str, Path]) -> Path:
    """Run the CLI exactly as a user does (``embcompress --threads T compress MODEL --ratio R --seed S``) and
    return the written folder; the command's own wall clock and peak RSS go into ``OUT.bench.json``."""
    out = WORK / "anytext-ckpt" / f"{model}-{ratio:g}x-s{seed}-t{threads}{'-domain' if domain else ''}"
    cmd = [sys.executable, "-m", "embcompress", "--threads", str(threads), "compress", model, "--ratio", f"{ratio:g}"]
    cmd += ["--seed", str(seed), "--no-distill", "--no-report", "-o", str(out), "--overwrite", "--json"]
    cmd += ["--domain", "--data", str(files["train"])] if domain else []
    if REUSE and (out.parent / f"{out.name}.bench.json").is_file():
        return out
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    info = {"command": " ".join(cmd[2:]), "seconds": round(seconds, 1), "result": json.loads(proc.stdout)}
    (out.parent / f"{out.name}.bench.json").write_text(json.dumps(info, indent=2, default=str))
    return out


def reload(model: str, folder: Path) -> Any:
    """The checkpoint loaded the way a user loads it: ``import embcompress`` + the Auto class's from_pretrained."""
    auto = transformers.AutoModelForCausalLM if model == "smollm2" else transformers.AutoModel
    return auto.from_pretrained(str(folder)).eval()


def variant_row(
    model: str, ratio: float, seed: int, threads: int, domain: bool, files: dict[str, Path], evaluations: dict
) -> dict[str, Any]:
    """Compress through the CLI, reload the written checkpoint and measure it on every corpus."""
    folder = cli_checkpoint(model, ratio, seed, threads, domain, files)
    info = json.loads((folder.parent / f"{folder.name}.bench.json").read_text())
    row: dict[str, Any] = {
        "variant": f"compress --ratio {ratio:g}" + (" --domain" if domain else ""),
        "ratio": ratio,
        "seed": seed,
        "threads": threads,
        "layout": info["result"]["layout"],
        "bytes": info["result"]["embedding_bytes"],
        "seconds": info["seconds"],
        "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
    }
    student = reload(model, folder)
    for corpus, ev in evaluations.items():
        row[corpus] = pick(compare(student, ev.teacher, ev.buckets, ev.special_ids), model)
    logger.info("%s %s", model, json.dumps(row))
    return row


def run_model(model: str, args: argparse.Namespace, files: dict[str, Path]) -> dict[str, Any]:
    _, teacher, tokenizer = load_source(model, LoadOptions())
    dense = teacher.get_input_embeddings().weight
    evaluations = {c: prepare_evaluation(teacher, tokenizer, files[c], report_options()) for c in CORPORA}
    rows = references(model, teacher, evaluations)
    for ratio in args.ratios:
        for seed in args.seeds if ratio == args.ratios[0] else args.seeds[:1]:
            rows.append(variant_row(model, ratio, seed, args.threads[0], False, files, evaluations))
    first = args.ratios[0]
    for threads in args.threads[1:]:  # same seed, other thread count: must write the same bytes
        rows.append(variant_row(model, first, args.seeds[0], threads, False, files, evaluations))
    rows += [
        variant_row(model, r, args.seeds[0], args.threads[0], True, files, evaluations) for r in args.domain_ratios
    ]
    entries = dense.numel()
    for row in rows:
        row["bits_per_weight"] = round(8 * row["bytes"] / entries, 3)
    return {"shape": list(dense.shape), "rows": rows, "verdicts": verdicts(model, rows), "spread": spread(model, rows)}


def spread(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio: min/max of every metric over the seeds and thread counts run, and whether the same seed wrote
    the same bytes under every thread count."""
    out: dict[str, Any] = {}
    for ratio in sorted({r["ratio"] for r in rows if "seed" in r and "--domain" not in r["variant"]}):
        group = [r for r in rows if r.get("ratio") == ratio and "--domain" not in r["variant"]]
        cell: dict[str, Any] = {"runs": len(group), "seeds": sorted({r["seed"] for r in group})}
        for corpus in CORPORA:
            for metric, _ in METRICS[model]:
                values = [r[corpus][metric] for r in group]
                cell[f"{corpus} {metric}"] = [min(values), max(values)]
        by_seed: dict[int, set[str]] = {}
        for r in group:
            by_seed.setdefault(r["seed"], set()).add(r["sha256"])
        cell["same_bytes_across_threads"] = all(len(d) == 1 for d in by_seed.values())
        out[f"{ratio:g}"] = cell
    return out


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
            label = row["variant"] + (f" (seed {row['seed']}, {row['threads']} threads)" if "seed" in row else "")
            cells = [label, f"{row['bytes'] / 1e6:.2f}", f"{row['bits_per_weight']:.2f}"]
            cells += [f"{row[c][m]:.4f}" for c in CORPORA for m in metrics]
            out.append("| " + " | ".join(cells) + " |")
        out += [""] + [f"- {line}" for line in data["verdicts"]] + [""]
        layouts = [
            f"- `{r['variant']}` seed {r['seed']}, {r['threads']} threads: {r['layout']} ({r['seconds']} s, "
            f"sha256 {r['sha256'][:12]})"
            for r in data["rows"]
            if "layout" in r
        ]
        out += ["Layouts, CLI wall clock (2 CPU cores) and checkpoint digests:", "", *layouts, ""]
        for ratio, cell in data["spread"].items():
            ranges = "; ".join(
                f"{k} {v[0]:.4f}-{v[1]:.4f}" for k, v in cell.items() if isinstance(v, list) and k != "seeds"
            )
            same = "identical bytes" if cell["same_bytes_across_threads"] else "DIFFERENT bytes"
            out += [
                f"- {ratio}x over seeds {cell['seeds']} and thread counts ({cell['runs']} runs): {ranges}; {same} "
                "for the same seed",
                "",
            ]
    if "cli" in results:
        out += [f"Default command `{results['cli']['command']}`: {results['cli']['seconds']} s wall clock.", ""]
    return "\n".join(out)


def main() -> None:
    global REUSE, REFERENCES
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--ratios", default="8,11,16", help="Default-mode ratios (comma list).")
    parser.add_argument("--seeds", default="0,1,2", help="Calibration seeds of the first ratio (comma list).")
    parser.add_argument(
        "--threads",
        default="2,1",
        help="Thread counts; the first for every run, the others re-run "
        "the first ratio and seed to check the bytes do not change.",
    )
    parser.add_argument("--domain-ratios", default="", help="--domain ratios for comparison ('' for none).")
    parser.add_argument("--time-cli", action="store_true", help="Also time the README's default MiniLM command.")
    parser.add_argument("--tag", default=None, help="Suffix of the result files.")
    parser.add_argument("--reuse", action="store_true", help="Reuse checkpoints an earlier run wrote.")
    parser.add_argument("--references", default=",".join(REFERENCES), help="Reference quantizers (comma list).")
    args = parser.parse_args()
    REUSE, REFERENCES = args.reuse, tuple(args.references.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    files = corpora(WORK / "anytext-corpora")
    args.ratios = [float(r) for r in args.ratios.split(",") if r]
    args.domain_ratios = [float(r) for r in args.domain_ratios.split(",") if r]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    results: dict[str, Any] = {"machine": machine(), "models": {}}
    results.update({k: getattr(args, k) for k in ("ratios", "domain_ratios", "seeds", "threads")})
    results["note"] = (
        "Every compressed row is the checkpoint `embcompress --threads T compress MODEL --ratio R --seed S "
        "--no-distill` wrote, reloaded with `import embcompress` + `AutoModel*.from_pretrained` as a user loads it. "
        "No distillation; the default mode uses no text (--domain counts tokens on the train side of a 90/10 hash "
        "split of the Python docs). Measured on the held-out 10% (pydocs), Debian fortunes and Debian package "
        "descriptions. MB = stored embedding bytes (a tied matrix once), bits/w = 8 * bytes / entries."
    )
    for model in args.models.split(","):
        results["models"][model] = run_model(model, args, files)
    if args.time_cli:
        results["cli"] = time_cli(files)
    name = "quality_anytext" + (f"_{args.tag}" if args.tag else "")
    write_results(name, results, markdown(results))


if __name__ == "__main__":
    main()
