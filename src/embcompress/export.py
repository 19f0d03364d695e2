"""Export a compressed checkpoint for runtimes that cannot import embcompress."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .checkpoint import atomic_output_dir, save_model_files
from .checkpoint import load as load_compressed
from .outputs import reserve_output
from .surgery import densify


def export_dense(folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> nn.Module:
    """Write a vanilla transformers checkpoint of a compressed model (factors multiplied out)."""
    out_path = Path(out)
    with reserve_output(out_path, overwrite, [Path(folder)]):
        dense = densify(load_compressed(folder))
        with atomic_output_dir(out_path, overwrite) as tmp:
            save_model_files(dense, tmp, Path(folder))
    return dense
