"""SmolLM2 at 16x: the transform code plus distillation of its float parts, on the three corpora of quality_anytext.

    nice -n 5 python benchmarks/quality_anytext_distill16.py --max-minutes 15     # about 20 minutes on 2 cores

Distils on the train side of the Python-docs split (``--data``), then measures KL / top-1 agreement on held-out
Python docs, Debian fortunes and Debian package descriptions. Prints JSON and writes
benchmarks/results/quality_anytext_16x_distilled.json.
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
from distill_common import WORK

from embcompress import CompressOptions, LoadOptions, compress_model, load_source
from embcompress.report.behaviour import compare

RESULT = Path(__file__).parent / "results" / "quality_anytext_16x_distilled.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-minutes", type=float, default=15.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    files = q.corpora(WORK / "anytext-corpora")
    _, teacher, tokenizer = load_source("smollm2", LoadOptions())
    evaluations = {c: q.prepare_evaluation(teacher, tokenizer, files[c], q.report_options()) for c in q.CORPORA}
    student = copy.deepcopy(teacher)
    options = CompressOptions(
        ratio=16, data=str(files["train"]), distill=True, max_minutes=args.max_minutes, report=False
    )
    start = time.perf_counter()
    result = compress_model(student, tokenizer, options, "smollm2")
    keep = ("steps", "tokens", "before", "after", "stop_reason")
    row = {
        "variant": f"compress --ratio 16 --distill --max-minutes {args.max_minutes:g}",
        "bytes": result.embedding_bytes,
        "seconds": round(time.perf_counter() - start, 1),
        "distill": {k: result.summary["distill"].get(k) for k in keep},
    }
    for corpus, ev in evaluations.items():
        row[corpus] = q.pick(compare(student, ev.teacher, ev.buckets, ev.special_ids), "smollm2")
    text = json.dumps(row, indent=2, sort_keys=True, default=str)
    RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
