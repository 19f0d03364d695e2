"""Scale: ``factorize`` and ``compress`` on large-vocabulary models, time and peak memory measured.

Models are built from configs with real vocabulary and hidden sizes and one decoder layer (narrow
MLP), randomly initialised, saved as safetensors, then compressed through the library's path
wrappers (``factorize_checkpoint``, ``compress_checkpoint``: load, fit, write) in a fresh process
each, with a thread sampling the process RSS every 50 ms:

* ``llama3``: Llama, 128256 x 4096, untied head (two 2.1 GB float32 matrices);
* ``gemma``: Gemma-2, 256000 x 2304, tied (one 2.4 GB matrix, ``embed_scale`` sqrt(2304)).

For each run the table gives wall time per phase, peak RSS, the RSS of the loaded model, and the
fit's own peak above what the process held before it (``fit_peak_over_loaded``; compress also keeps
the original as teacher), in units of one dense matrix: issue #13's bound is 2x. Random weights
have a flat spectrum, so the quality columns of these runs mean nothing; time and memory do.
Also measured: token counting over a large text file (the Python docs repeated), tokens/s and RSS.

    nice -n 5 python benchmarks/scale.py                    # both models, about 25 minutes on 2 cores
    python benchmarks/scale.py --models gemma --runs compress   # replaces those rows of the results only

Prints JSON on stdout and writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from distill_common import PYDOCS, WORK, machine, write_results
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from embcompress import (
    CompressOptions,
    FactorizeOptions,
    LoadOptions,
    compress_checkpoint,
    factorize_checkpoint,
    load_source,
)
from embcompress.data import count_tokens, iter_documents

logger = logging.getLogger("scale")
SHAPES = {"llama3": (128256, 4096, False), "gemma": (256000, 2304, True)}
RUNS = ("factorize", "compress", "count")
COUNT_MB = 512


def build(name: str) -> Path:
    """Save the random large-vocabulary model ``name`` (once) and return its folder."""
    folder = WORK / f"scale-{name}"
    if (folder / "config.json").is_file():
        return folder
    vocab, hidden, tied = SHAPES[name]
    common = {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": 1, "intermediate_size": 1024}
    common |= {"tie_word_embeddings": tied}
    torch.manual_seed(0)
    if name == "gemma":
        model = Gemma2ForCausalLM(Gemma2Config(num_attention_heads=8, num_key_value_heads=4, head_dim=256, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(num_attention_heads=32, num_key_value_heads=8, head_dim=128, **common))
    model.save_pretrained(folder)
    shutil.copytree(WORK / "scale-tokenizer", folder, dirs_exist_ok=True)
    return folder


class PeakRss:
    """Samples this process's RSS every 50 ms in a thread; ``mark()`` starts a new phase."""

    def __init__(self) -> None:
        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def mark(self) -> int:
        """RSS now; the peak restarts from here."""
        now = self.proc.memory_info().rss
        self.peak = now
        return now


def _gib(n: float) -> float:
    return n / 2**30


def run_fit(name: str, run: str) -> dict[str, Any]:
    """Load + fit + write through the path wrapper; the fit phase is timed by the library's log."""
    folder = WORK / f"scale-{name}"
    vocab, hidden, tied = SHAPES[name]
    matrix = vocab * hidden * 4
    out = WORK / f"scale-{name}-{run}"
    rss = PeakRss()
    base = rss.mark()
    start = time.perf_counter()
    if run == "factorize":
        factorize_checkpoint(str(folder), out, FactorizeOptions(rank=256), LoadOptions(), overwrite=True)
    else:
        options = CompressOptions(ratio=8.0, report=False, distill=False, ood_data=None)
        compress_checkpoint(str(folder), out, options, LoadOptions(), overwrite=True)
    seconds = time.perf_counter() - start
    rss.stop = True
    model_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {
        "model": name,
        "run": run,
        "shape": [vocab, hidden],
        "tied": tied,
        "seconds": seconds,
        "peak_rss_gib": _gib(rss.peak),
        "start_rss_gib": _gib(base),
        "checkpoint_gib": _gib(model_bytes),
        "output_gib": _gib(out_bytes),
        "dense_matrix_gib": _gib(matrix),
        "peak_over_checkpoint_in_matrices": (rss.peak - base - model_bytes) / matrix,
    }


def run_count() -> dict[str, Any]:
    """Token counting over a ``COUNT_MB`` text file: tokens/s and peak RSS (bounded: the file streams)."""
    corpus = WORK / f"count-{COUNT_MB}mb.txt"
    if not corpus.is_file():
        docs = list(iter_documents(str(PYDOCS)))
        with corpus.open("w", encoding="utf-8") as handle:
            while handle.tell() < COUNT_MB * 2**20:
                handle.write("\n\n".join(docs) + "\n\n")
    tokenizer = AutoTokenizer.from_pretrained(WORK / "scale-tokenizer")
    rss = PeakRss()
    base = rss.mark()
    start = time.perf_counter()
    counts = count_tokens(tokenizer, iter_documents(str(corpus)), len(tokenizer))
    seconds = time.perf_counter() - start
    rss.stop = True
    tokens = int(counts.sum())
    return {
        "run": "count",
        "corpus_mib": corpus.stat().st_size / 2**20,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "peak_rss_over_start_mib": (rss.peak - base) / 2**20,
    }


def measure(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_tokenizer() -> None:
    """A real byte-level BPE tokenizer for the synthetic models (SmolLM2's, ids < every vocab here)."""
    target = WORK / "scale-tokenizer"
    if target.is_dir():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    _, _, tokenizer = load_source("smollm2", LoadOptions())
    tokenizer.save_pretrained(target)


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Scale (benchmarks/scale.py)",
        "",
        f"Machine: `{json.dumps(data['machine'], sort_keys=True)}`.",
        "",
        "| model | shape | run | seconds | peak RSS GiB | checkpoint GiB | output GiB | peak over checkpoint "
        "(dense matrices) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if r["run"] == "count":
            continue
        shape = f"{r['shape'][0]} x {r['shape'][1]}{' tied' if r['tied'] else ''}"
        lines.append(
            f"| {r['model']} | {shape} | {r['run']} | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} | "
            f"{r['checkpoint_gib']:.2f} | {r['output_gib']:.3f} | {r['peak_over_checkpoint_in_matrices']:.2f} |"
        )
    lines += [f"\n{r['model']} {r['run']}: {r['note']}" for r in data["rows"] if r.get("note")]
    for r in data["rows"]:
        if r["run"] == "count":
            lines += [
                "",
                f"Token counting: {r['corpus_mib']:.0f} MiB of text, {r['tokens']:,} tokens, "
                f"{r['tokens_per_s']:,.0f} tokens/s, peak RSS +{r['peak_rss_over_start_mib']:.0f} MiB over start.",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--note", default="", help="A line about these runs (e.g. what else shared the machine).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.worker:
        row = run_count() if args.worker[0] == "count" else run_fit(*args.worker)
        print(json.dumps(row))
        return
    save_tokenizer()
    for model in args.models:
        build(model)
    rows = previous_rows()
    for run in args.runs:
        for model in args.models if run != "count" else ["-"]:
            row = measure(["count"] if run == "count" else [model, run]) | ({"note": args.note} if args.note else {})
            rows = [r for r in rows if (r.get("model", "-"), r["run"]) != (model, run)] + [row]
            logger.warning("%s", row)
    rows.sort(key=lambda r: (RUNS.index(r["run"]), r.get("model", "")))
    write_results("scale", {"machine": machine(), "rows": rows}, markdown({"machine": machine(), "rows": rows}))


def previous_rows() -> list[dict[str, Any]]:
    """Rows of the committed results (a run of some models or runs replaces only those rows)."""
    path = Path(__file__).parent / "results" / "scale.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


if __name__ == "__main__":
    main()
