"""Per-row symmetric integer quantization (factor storage and the int8/int4 reference rows)."""

from __future__ import annotations

import torch

from .errors import EmbcompressError

FACTOR_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}


def quantize_rows(matrix: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row symmetrically to ``bits`` bits with one float32 scale per row.

    Returns:
        ``(q, scale)`` with ``q`` int8 of the same shape and ``scale`` of shape ``(rows, 1)``,
        such that ``q * scale`` approximates ``matrix``.
    """
    qmax = 2 ** (bits - 1) - 1
    m = matrix.detach().float()
    scale = m.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.round(m / scale).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_rows`."""
    return q.to(dtype) * scale.to(dtype)


def fake_quantize_rows(matrix: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then de-quantize (the matrix a per-row ``bits``-bit store would give back)."""
    q, scale = quantize_rows(matrix, bits)
    return dequantize_rows(q, scale, matrix.dtype)


def dtype_from_name(name: str) -> torch.dtype:
    """Map a factor dtype name to a torch dtype, with a clear error for unknown names."""
    if name not in FACTOR_DTYPES:
        raise EmbcompressError(f"unknown factor dtype '{name}'; valid: {', '.join(FACTOR_DTYPES)}")
    return FACTOR_DTYPES[name]
