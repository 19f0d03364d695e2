"""Run by ``accelerate launch --multi_gpu --num_processes 2`` (CPU) in test_distill_accelerate.py: one tiny
distillation per process; each process writes what it saw and what it holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from embcompress.distill import DistillConfig, distill_checkpoint, make_accelerator
from embcompress.sources import LoadOptions


def main(root: Path) -> None:
    torch.set_num_threads(1)
    cfg = DistillConfig(steps=4, batch_size=2, seq_len=16, eval_every=2, eval_windows=4, lr=1e-2)
    result = distill_checkpoint(
        root / "student-llama-tied", str(root / "teacher-llama-tied"), root / "out", cfg,
        data=root / "corpus.txt", load=LoadOptions(device="cpu"),
    )  # fmt: skip
    acc = make_accelerator("cpu")
    record = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "data_digest": result.data_digest,
        "params_digest": result.params_digest,
        "tokens": result.tokens,
    }
    (root / f"rank{acc.process_index}.json").write_text(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
