"""SmolLM2 at 16x: the transform code plus distillation of its float parts, on the three corpora of quality_anytext.

    nice -n 5 python benchmarks/quality_anytext_distill16.py --data-free   # the recipe's budget (40 min): ~55 min
    nice -n 5 python benchmarks/quality_anytext_distill16.py --max-minutes 15   # distil on Python docs, ~25 min

Distils on the train side of the Python-docs split (``--data``), or with ``--data-free`` on text the original
model samples itself (no domain), then measures KL / top-1 agreement on held-out Python docs, Debian fortunes and
Debian package descriptions. Prints JSON and updates that variant's row in
benchmarks/results/quality_anytext_16x_distilled.json (rows keyed by variant).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import quality_anytext as q
import torch
from distill_common import WORK, machine

from embcompress import CompressOptions, LoadOptions, compress_model, load_source
from embcompress.report.behaviour import compare

RESULT = Path(__file__).parent / "results" / "quality_anytext_16x_distilled.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-minutes", type=float, default=None, help="distillation budget (default: compress's)")
    parser.add_argument("--data-free", action="store_true", help="distil on text sampled from the original model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    files = q.corpora(WORK / "anytext-corpora")
    _, teacher, tokenizer = load_source("smollm2", LoadOptions())
    evaluations = {c: q.prepare_evaluation(teacher, tokenizer, files[c], q.report_options()) for c in q.CORPORA}
    student = copy.deepcopy(teacher)
    options = CompressOptions(
        ratio=16,
        data=None if args.data_free else str(files["train"]),
        distill=True,
        max_minutes=args.max_minutes,
        report=False,
    )
    start = time.perf_counter()
    result = compress_model(student, tokenizer, options, "smollm2")
    minutes = result.summary["distill"]["config"]["max_minutes"]
    keep = ("steps", "tokens", "before", "after", "stop_reason")
    row = {
        "variant": f"compress --ratio 16 --distill --max-minutes {minutes:g}"
        + (" (data-free)" if args.data_free else " --data pydocs"),
        "bytes": result.embedding_bytes,
        "seconds": round(time.perf_counter() - start, 1),
        "distill": {k: result.summary["distill"].get(k) for k in keep},
    }
    for corpus, ev in evaluations.items():
        row[corpus] = q.pick(compare(student, ev.teacher, ev.buckets, ev.special_ids), "smollm2")
    rows = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    rows = rows if "variant" not in rows else {}  # the old single-row file predates the current code
    rows[row["variant"]] = {**row, "machine": machine()}
    RESULT.write_text(json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n")
    print(json.dumps(row, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
