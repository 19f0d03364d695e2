"""Training throughput on CPU for SmolLM2 r128: ``--train factors`` vs a naive loop that
backpropagates into every parameter (``--train all``), and the teacher cache (top-k logits on
disk) vs running the teacher every step.

    nice -n 5 python benchmarks/distill_speed.py --steps 4
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from distill_common import PYDOCS, machine, student_dir, write_results

import embcompress
from embcompress import DistillConfig, LoadOptions, load_source
from embcompress.distill import Distiller, make_accelerator
from embcompress.distill.batches import CorpusBatches
from embcompress.distill.cache import TeacherCache
from embcompress.distill.trainer import LOG_NAME
from embcompress.kinds import ModelKind


def run_steps(
    teacher: torch.nn.Module, tokenizer: Any, student: Path, train: str, steps: int, cache: Path | None, data: Path
) -> dict[str, float]:
    """``steps`` optimiser steps; per-step tokens/s from the JSONL log, the first (warm-up) step excluded."""
    cfg = DistillConfig(
        steps=steps + 1,
        train=train,
        eval_every=10**6,
        eval_windows=1,
        checkpoint_every=10**6,
        batch_size=8,
        seq_len=128,
    )
    batches = CorpusBatches(data, tokenizer, cfg, per_document=False)
    held, split = batches.heldout(1)
    state = Path(tempfile.mkdtemp())
    tcache = TeacherCache(cache, {"bench": 1}) if cache is not None else None
    model = embcompress.load(student)
    kind, acc = ModelKind.CAUSAL_LM, make_accelerator("cpu")
    distiller = Distiller(model, teacher, tokenizer, cfg, kind, batches, held, split, acc, state, cache=tcache)
    distiller.train()
    records = [json.loads(line) for line in (state / LOG_NAME).read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r.get("event") == "step"][1:]
    shutil.rmtree(state, ignore_errors=True)
    return {
        "tokens_per_s": statistics.median(rates),
        "steps_measured": len(rates),
        "trainable_params": sum(p.numel() for p in distiller.params.values()),
        "cache_hits": tcache.hits if tcache else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant; the first is warm-up and not measured")
    parser.add_argument("--data", type=Path, default=PYDOCS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    student = student_dir("smollm2", 128)
    _, teacher, tokenizer = load_source("smollm2", LoadOptions())
    results: dict[str, Any] = {
        "machine": machine(),
        "model": "smollm2 r128 tied",
        "batch": "8 x 128",
        "steps": args.steps,
    }
    results["factors"] = run_steps(teacher, tokenizer, student, "factors", args.steps, None, args.data)
    results["all (naive)"] = run_steps(teacher, tokenizer, student, "all", args.steps, None, args.data)
    cache = Path(tempfile.mkdtemp()) / "cache"
    results["factors, cache cold (top-64 written)"] = run_steps(
        teacher, tokenizer, student, "factors", args.steps, cache, args.data
    )
    results["factors, cache warm (top-64 read)"] = run_steps(
        teacher, tokenizer, student, "factors", args.steps, cache, args.data
    )
    results["cache_bytes_per_batch"] = sum(f.stat().st_size for f in cache.glob("*.safetensors")) // max(
        1, len(list(cache.glob("*.safetensors")))
    )
    shutil.rmtree(cache.parent, ignore_errors=True)
    base = results["all (naive)"]["tokens_per_s"]
    rows = [
        f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {r['trainable_params']:,} |"
        for name, r in results.items()
        if isinstance(r, dict) and "tokens_per_s" in r
    ]
    md = "\n".join(
        [
            "# distill_speed: SmolLM2-135M r128 (tied), batch 8 x 128, CPU",
            "",
            f"{results['machine']}; median of {max(2, args.steps) - 1} step(s) after one warm-up step.",
            "",
            "| variant | tokens/s | vs naive | trainable params |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Teacher cache: {results['cache_bytes_per_batch'] / 1e6:.2f} MB per batch on disk (top-64 values + ids).",
        ]
    )
    write_results("distill_speed", results, md)


if __name__ == "__main__":
    main()
