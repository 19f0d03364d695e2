"""Shared helpers of the distillation benchmarks: students, corpus, result files."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from embcompress import FactorizeOptions, LoadOptions, factorize_checkpoint

RESULTS = Path(__file__).parent / "results"
PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
WORK = Path("/tmp/embcompress-bench")
logger = logging.getLogger("benchmarks")


def student_dir(teacher: str, rank: int) -> Path:
    """A plain SVD student of ``teacher`` at ``rank`` (factorized once, then reused)."""
    folder = WORK / f"{teacher}-r{rank}"
    if not (folder / "model.safetensors").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        factorize_checkpoint(teacher, folder, FactorizeOptions(rank=rank), LoadOptions(), overwrite=True)
    return folder


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    """Print JSON on stdout and write ``results/<name>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(text)
