"""Per-row symmetric integer quantization (factor storage and the int8/int4 reference rows)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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


# ------------------------------------------------------------------------------------------------ fast kernels

#: ``_weight_int8pack_mm`` needs the reduction dimension padded to a multiple of this.
INT8_MM_ALIGN = 32
#: From this many activation rows on, the int8 table is multiplied as bfloat16 chunks of ``GEMM_CHUNK`` rows.
GEMM_ROWS, GEMM_CHUNK = 16, 8192
_FAST = {"enabled": True}


def set_fast_kernels(enabled: bool) -> bool:
    """Turn the int8 serving kernel on or off for the whole process; returns the previous setting.

    With it on (the default), inference-mode LM-head products over int8 tables on the CPU never
    de-quantize the table (``torch._weight_int8pack_mm`` for few rows, bfloat16 GEMMs over table chunks
    for many, see :func:`int8_matmul_t`); activations and logits are rounded to bfloat16 (relative ~2e-3).
    Turn it off for bit-for-bit float32 products. A :func:`fast_kernels` block overrides it in its thread.
    """
    previous, _FAST["enabled"] = _FAST["enabled"], bool(enabled)
    return previous


#: The setting of :func:`fast_kernels` blocks: local to a thread (or asyncio task), ``None`` outside them.
_FAST_HERE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("embcompress_fast_kernels", default=None)


@contextlib.contextmanager
def fast_kernels(enabled: bool = True) -> Iterator[None]:
    """Turn the int8 serving kernel on or off inside a ``with`` block (``with fast_kernels(False):`` for
    exact float32), for the current thread only: a model serving from another thread keeps the
    process-wide setting of :func:`set_fast_kernels`."""
    token = _FAST_HERE.set(bool(enabled))
    try:
        yield
    finally:
        _FAST_HERE.reset(token)


def use_fast_kernel(x: torch.Tensor) -> bool:
    """Inference on CPU, not being traced or exported, not differentiating through ``x``."""
    here = _FAST_HERE.get()
    enabled = _FAST["enabled"] if here is None else here
    if not enabled or x.device.type != "cpu" or not hasattr(torch, "_weight_int8pack_mm"):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return False
    return not (torch.is_grad_enabled() and x.requires_grad)


def pad_int8(q: torch.Tensor) -> torch.Tensor:
    """``q`` with zero columns appended up to a multiple of :data:`INT8_MM_ALIGN` (cache it; it is a copy)."""
    pad = (-q.shape[1]) % INT8_MM_ALIGN
    return torch.nn.functional.pad(q, (0, pad)).contiguous() if pad else q.contiguous()


def _int8_bf16_mm(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``x @ table.T`` in bfloat16: the int8 GEMV kernel for few rows (reads 1 byte per weight); for
    :data:`GEMM_ROWS` rows or more, bfloat16 GEMMs over table chunks converted on the fly (AMX/AVX-512
    bf16 units; the conversion is amortised over the rows)."""
    if x.shape[0] < GEMM_ROWS:
        ones = torch.ones(table.shape[0], dtype=torch.bfloat16, device=table.device)
        return torch._weight_int8pack_mm(x, table, ones)
    return torch.cat([x @ part.to(torch.bfloat16).T for part in table.split(GEMM_CHUNK)], -1)


def int8_matmul_t(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (q[:, :K] * scale).T`` for an int8 table ``q`` (``N x K'``, ``K' >= K`` zero-padded columns
    allowed, see :func:`pad_int8`) with per-row ``scale`` (``N`` or ``N x 1``).

    The fast kernel (see :func:`set_fast_kernels`) never de-quantizes the table; otherwise the table is
    de-quantized in ``x``'s dtype (differentiable in ``x`` and ``scale``). Returns ``x``'s dtype.
    """
    k = x.shape[-1]
    if use_fast_kernel(x):
        table = q if q.shape[1] % INT8_MM_ALIGN == 0 else pad_int8(q)
        flat = torch.nn.functional.pad(x.reshape(-1, k), (0, table.shape[1] - k)).to(torch.bfloat16)
        out = _int8_bf16_mm(flat.contiguous(), table).to(x.dtype).reshape(*x.shape[:-1], -1)
    else:
        out = x @ q[:, :k].to(x.dtype).T
    return out * scale.reshape(-1).to(x.dtype) if scale is not None else out
