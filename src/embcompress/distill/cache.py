"""On-disk cache of teacher outputs (top-k logits, hidden states) for multi-epoch runs.

One safetensors file per (process, batch-within-epoch); never pickle. The first epoch computes
and writes the teacher's outputs, later epochs read them instead of running the teacher. A
``fingerprint.json`` records the settings the cache was built with; a mismatch is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import EmbcompressError

FINGERPRINT = "fingerprint.json"


class TeacherCache:
    """Read/write teacher targets keyed by ``(rank, batch key)``."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], rank: int = 0) -> None:
        self.folder, self.rank = folder, rank
        self.hits = 0
        self.misses = 0
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / FINGERPRINT
        wanted = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        if stamp.is_file():
            found = json.loads(stamp.read_text())
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                raise EmbcompressError(
                    f"teacher cache '{folder}' was built with different settings ({', '.join(changed)}); "
                    "delete it or pass another --cache-teacher folder"
                )
        elif rank == 0:
            stamp.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")

    def _file(self, key: int) -> Path:
        return self.folder / f"r{self.rank}-b{key:08d}.safetensors"

    def get(self, key: int) -> dict[str, torch.Tensor] | None:
        file = self._file(key)
        if key < 0 or not file.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(str(file))

    def put(self, key: int, tensors: dict[str, torch.Tensor]) -> None:
        if key < 0:
            return
        file = self._file(key)
        tmp = file.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, file)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}
