"""Size accounting: parameters and bytes per replaced module and per model, on disk and resident."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..methods import get_method, method_names
from ..modules import CompressedEmbedding, FactorizedEmbedding, FactorizedLinear
from ..sizes import tensor_bytes

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")


def model_size(model: nn.Module) -> dict[str, int]:
    """Parameters and bytes of a model's unique parameters, and resident bytes (parameters + buffers)."""
    params, nbytes = tensor_bytes(list(model.parameters()))
    _, buffer_bytes = tensor_bytes(list(model.buffers()))
    return {"params": params, "bytes": nbytes, "resident_bytes": nbytes + buffer_bytes}


def _source(module: nn.Module) -> nn.Module:
    return module.source if isinstance(module, FactorizedLinear) else module


def is_linear_factorization(module: nn.Module) -> bool:
    """True when the head product runs through linear factors (no dense matrix is rebuilt)."""
    source = _source(module)
    return isinstance(source, FactorizedEmbedding) and type(source).project is FactorizedEmbedding.project


def matrix_storage(module: nn.Module) -> tuple[int, int]:
    """``(params, bytes)`` stored for the matrix of an embedding / head (bias excluded)."""
    source = _source(module)
    if isinstance(source, CompressedEmbedding) or not hasattr(source, "weight"):
        return tensor_bytes([p for n, p in source.named_parameters() if n != "bias"])
    weight = source.weight
    return weight.numel(), weight.numel() * weight.element_size()


def head_runtime_extra_bytes(module: nn.Module) -> int:
    """Bytes a head needs at run time beyond its stored parameters.

    A nonlinear factorization cannot compute ``h @ E.T`` through its factors: it rebuilds (or caches)
    the dense ``V x H`` matrix, which is then resident while serving. Modules may say so exactly
    with a ``serving_extra_nbytes()`` method.
    """
    source = _source(module)
    explicit = getattr(source, "serving_extra_nbytes", None)
    if callable(explicit):
        return int(explicit())
    if isinstance(source, CompressedEmbedding) and (_serving_dense(source) or not is_linear_factorization(module)):
        return source.num_embeddings * source.embedding_dim * torch.finfo(source.compute_dtype).bits // 8
    return 0


def _serving_dense(source: CompressedEmbedding) -> bool:
    name = source.spec.method
    return name in method_names() and bool(getattr(get_method(name), "serving_dense", False))


def module_size(role: str, path: str, dense: nn.Module, replaced: nn.Module, tied: bool) -> dict[str, Any]:
    """Size of one replaced matrix before/after; a tied head stores nothing of its own."""
    before, after = ((0, 0), (0, 0)) if tied else (matrix_storage(dense), matrix_storage(replaced))
    return {
        "role": role,
        "path": path,
        "shape": [int(dense.weight.shape[0]), int(dense.weight.shape[1])],
        "tied": tied,
        "params_before": before[0],
        "params_after": after[0],
        "bytes_before": before[1],
        "bytes_after": after[1],
        "ratio": before[1] / after[1] if after[1] else None,
        "factorized": isinstance(_source(replaced), CompressedEmbedding),
        "rank": getattr(_source(replaced), "rank", None),
        "runtime_extra_bytes": head_runtime_extra_bytes(replaced) if role == "output" else 0,
    }


def files_on_disk(folder: Path | None, gguf_file: str | None = None) -> dict[str, Any] | None:
    """Bytes of the files of a checkpoint folder (all files, and weight files only), or of one GGUF file."""
    if folder is None or not folder.is_dir():
        return None
    if gguf_file:
        path = folder / gguf_file
        size = os.path.getsize(path)
        return {"total_bytes": size, "weights_bytes": size, "files": 1, "note": "GGUF file (quantized on disk)"}
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    weights = [p for p in files if p.name.endswith(WEIGHT_SUFFIXES)]
    return {
        "total_bytes": sum(os.path.getsize(p) for p in files),
        "weights_bytes": sum(os.path.getsize(p) for p in weights),
        "files": len(files),
    }
