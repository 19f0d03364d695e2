"""Two CPU processes under ``accelerate launch --multi_gpu --num_processes 2`` with ACCELERATE_USE_CPU
(torchrun-style launcher; plain ``--cpu`` would need mpirun): different data per rank, one saved result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from embcompress.distill.trainer import tensors_digest
from helpers.distill import build_pair, write_corpus

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_process_ddp_run_shards_data_and_saves_rank0_parameters(tmp_path: Path) -> None:
    build_pair(tmp_path, "llama-tied")
    write_corpus(tmp_path / "corpus.txt", 200)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(WORKER), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["data_digest"] != ranks[1]["data_digest"]
    assert ranks[0]["params_digest"] == ranks[1]["params_digest"]
    assert ranks[0]["tokens"] == 4 * 2 * 2 * 16
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    factors = {k: v for k, v in saved.items() if k.endswith((".codes", ".basis"))}
    assert tensors_digest(factors) == ranks[0]["params_digest"]
