"""Byte accounting: what a tensor, a module, a quantized matrix or a bucket layout stores.

The one place bytes are counted: layout planning, budgets, the report's size tables, model cards
and the tests all use these functions, so a number printed anywhere is the number stored on disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

#: Rank of a bucket whose rows are stored whole (grouped layouts).
DENSE = "dense"


def unique_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Drop tensors sharing storage with an earlier one (tied weights count once)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = []
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.device.type == "meta" or key not in seen:
            seen.add(key)
            out.append(t)
    return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """``(numel, bytes)`` of the unique tensors."""
    uniq = unique_tensors(tensors)
    return sum(t.numel() for t in uniq), sum(t.numel() * t.element_size() for t in uniq)


def module_bytes(module: nn.Module) -> tuple[int, int]:
    """``(params, bytes)`` a module stores in its parameters (shared tensors counted once)."""
    return tensor_bytes(module.parameters())


def quantized_nbytes(rows: int, cols: int, bits: int) -> int:
    """Bytes of a per-row quantized ``rows x cols`` matrix: packed values plus float32 scales."""
    return (rows * cols * bits + 7) // 8 + rows * 4


def layout_bytes(cols: int, sizes: Sequence[int], ranks: Sequence[int | str], scale_bytes: int = 4) -> int:
    """Stored bytes of a bucket layout with int8 factors: one byte per value plus an fp32 scale per
    stored row (whole rows, code rows and basis rows), and the int32 token permutation."""
    nbytes = 4 * sum(sizes)
    for n, r in zip(sizes, ranks, strict=True):
        nbytes += n * (cols + scale_bytes) if r == DENSE else n * (int(r) + scale_bytes) + int(r) * (cols + scale_bytes)
    return nbytes


def mb(nbytes: int | None) -> str:
    """Bytes in MB (kB below 100 kB)."""
    if nbytes is None:
        return "-"
    return f"{nbytes / 1e3:.2f} kB" if nbytes < 100_000 else f"{nbytes / 1e6:.2f} MB"
