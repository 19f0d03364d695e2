"""Embedding-matrix codecs: the deployed reference quantizers and a metric-aware transform code.

A leaf module (torch and :mod:`embcompress.quant` only). Every quantizer returns the de-quantized matrix
together with the exact number of bytes its stored form takes (packed sub-byte values, all scales, codebooks,
rotation, mean).

Reference quantizers (as deployed):

* :func:`quantize_per_row` -- symmetric per-row int8/int4, ``scale = absmax / (2**(bits-1) - 1)``, fp32 scale;
* :func:`quantize_q8_0` -- llama.cpp Q8_0: blocks of 32 along the row, fp16 ``d = absmax / 127``;
* :func:`quantize_q4_0` -- llama.cpp Q4_0: blocks of 32, fp16 ``d = max_signed / -8``,
  ``q = min(15, floor(x / d + 8.5))`` (ggml's reference rounding);
* :func:`quantize_nf4` -- bitsandbytes NF4: blocks of 64, fp16 absmax, the 16 NF4 levels.

Transform code (:class:`TransformCode`, :func:`encode`, :func:`decode_rows`): subtract the mean row, change
basis to the eigenvectors of ``M^{1/2} S M^{1/2}`` (``S`` the row covariance of the matrix, ``M`` an optional
PSD error metric such as ``E[h h^T]`` of the final hidden states that multiply an LM head), allocate integer
bits to bands of 8 components by greedy reverse water-filling on the band variances, rotate the whitened
coefficients of each run of equal-bit bands by a seeded random rotation (folded into the basis: they become
near-Gaussian), and quantize each run with a 1-D k-means (Lloyd-Max) codebook, snapped onto an int8 grid, over
values normalised by a per-component scale and one fp16 scale per row; a last per-component gain (folded into
the component scale) removes the codebook's shrinkage toward zero. Decoding a row is a codebook lookup, two
scalings and one ``K x H`` product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import torch

from .quant import quantize_rows

#: The 16 NF4 levels of bitsandbytes (normal-float 4-bit, absmax-normalised).
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip

#: MSE of the Lloyd-Max quantizer of a unit Gaussian at 0..8 bits (used to rank bit allocations).
GAUSS_DISTORTION: tuple[float, ...] = (
    1.0, 0.3634, 0.1175, 0.03454, 0.009497, 0.002499, 0.000642, 0.000163, 0.0000410,
)  # fmt: skip
SAMPLE = 1 << 18  # values per group the codebook k-means sees
CHUNK_ROWS = 8192  # rows the encoder transforms at a time (bounds its temporaries)
BAND = 8  # components per allocation band: n * bits is then a whole number of bytes for every bit width


# --------------------------------------------------------------------------------------------------- packing


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit integers (1..8) along the last dimension into uint8, LSB first.

    Args:
        values: integer tensor ``(..., n)`` with values in ``[0, 2**bits)``.
        bits: bit width of each value.

    Returns:
        uint8 tensor ``(..., ceil(n * bits / 8))``; the last byte is zero-padded.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    v = values.to(torch.int32)
    n = v.shape[-1]
    shifts = torch.arange(bits, dtype=torch.int32, device=v.device)
    planes = ((v[..., None] >> shifts) & 1).reshape(*v.shape[:-1], n * bits)
    pad = (-n * bits) % 8
    planes = torch.nn.functional.pad(planes, (0, pad)).reshape(*v.shape[:-1], -1, 8)
    weights = 1 << torch.arange(8, dtype=torch.int32, device=v.device)
    return (planes * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` ``bits``-bit values of each packed row, as int64.

    When ``n`` is a multiple of 8 (every band group), each run of 8 values fills exactly ``bits`` bytes: those
    bytes are read as one little-endian word and the values shifted out of it (``bits`` times fewer
    operations than going through single bits).
    """
    if n % 8 == 0:
        lead = packed.shape[:-1]
        words = packed[..., : n * bits // 8].to(torch.int64).reshape(*lead, n // 8, bits)
        shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
        word = (words << shifts).sum(-1, keepdim=True)
        values = (word >> (torch.arange(8, dtype=torch.int64, device=packed.device) * bits)) & ((1 << bits) - 1)
        return values.reshape(*lead, n)
    p = packed.to(torch.int32)
    planes = (p[..., None] >> torch.arange(8, dtype=torch.int32, device=p.device)) & 1
    planes = planes.reshape(*p.shape[:-1], -1)[..., : n * bits].reshape(*p.shape[:-1], n, bits)
    weights = 1 << torch.arange(bits, dtype=torch.int32, device=p.device)
    return (planes * weights).sum(-1).to(torch.int64)


def unpack_bits_bytewise(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """:func:`unpack_bits` in 16-bit windows: the same int64 values, for graphs that other runtimes execute.

    Value ``i`` starts at bit ``i * bits``, so it lies within the byte there and the next one (``bits <= 8``
    and a shift below 8 need at most 15 bits). Each value is read from those two bytes as an int32
    ``lo + 256 * hi``, divided by its shift and masked: every intermediate stays below ``2**16``, so
    runtimes that reduce int64 through doubles (onnxruntime's ``ReduceSum`` loses bits above ``2**53``,
    where :func:`unpack_bits`' 56-bit words for 7 bits land) compute it exactly. One ``Gather`` per byte
    plane and elementwise int32 ops; the indices and divisors are constants of ``n`` and ``bits``.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    device = packed.device
    start = torch.arange(n, dtype=torch.int64, device=device) * bits
    lo = start // 8
    # A value that ends in the last byte needs no next byte: the mask drops whatever the clamped index reads.
    hi = (lo + 1).clamp(max=packed.shape[-1] - 1)
    divisor = (2 ** (start % 8)).to(torch.int32)
    window = packed.index_select(-1, lo).to(torch.int32) + packed.index_select(-1, hi).to(torch.int32) * 256
    values = torch.div(window, divisor, rounding_mode="trunc") & ((1 << bits) - 1)
    return values.to(torch.int64)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes :func:`pack_bits` uses for ``n`` values of ``bits`` bits."""
    return (n * bits + 7) // 8


# ------------------------------------------------------------------------------------------ reference quantizers


def quantize_per_row(matrix: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, int]:
    """Symmetric per-row quantization, ``scale = absmax / (2**(bits-1) - 1)`` in fp32 per row.

    Returns:
        ``(dequantized, nbytes)``; bytes = packed values + 4 bytes of scale per row.
    """
    q, scale = quantize_rows(matrix, bits)
    rows, cols = matrix.shape
    return q * scale, rows * (packed_nbytes(cols, bits) + 4)


def _blocks(matrix: torch.Tensor, block: int) -> torch.Tensor:
    """Rows cut into blocks of ``block`` values; a short last block is zero-padded (and costs a whole block)."""
    rows, cols = matrix.shape
    x = torch.nn.functional.pad(matrix.detach().float(), (0, (-cols) % block))
    return x.reshape(rows, -1, block)


def _unblock(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return blocks.reshape(shape[0], -1)[:, : shape[1]]


def quantize_q8_0(matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
    """llama.cpp Q8_0: blocks of 32, ``d = absmax / 127`` stored fp16, ``q = round(x / d)`` int8 (34 B/block)."""
    x = _blocks(matrix, 32)
    d = x.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(x * inv).clamp_(-127, 127)
    out = q * d.half().float()
    return _unblock(out, matrix.shape), x.shape[0] * x.shape[1] * 34


def quantize_q4_0(matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
    """llama.cpp Q4_0 with ggml's reference rounding (18 bytes per block of 32: fp16 ``d`` + 16 packed bytes).

    ``d = max / -8`` where ``max`` is the block's value of largest magnitude (with its sign),
    ``q = min(15, floor(x / d + 8.5))``, dequantized as ``(q - 8) * fp16(d)``.
    """
    x = _blocks(matrix, 32)
    idx = x.abs().argmax(-1, keepdim=True)
    d = x.gather(-1, idx) / -8
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.floor(x * inv + 8.5).clamp_(0, 15)
    out = (q - 8) * d.half().float()
    return _unblock(out, matrix.shape), x.shape[0] * x.shape[1] * 18


def quantize_nf4(matrix: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, int]:
    """bitsandbytes-style NF4: blocks of ``block``, fp16 absmax per block, nearest of the 16 NF4 levels."""
    x = _blocks(matrix, block)
    absmax = x.abs().amax(-1, keepdim=True).half().float()
    levels = torch.tensor(NF4_LEVELS)
    u = x / absmax.clamp_min(1e-12)
    q = torch.bucketize(u, (levels[1:] + levels[:-1]) / 2)
    out = levels[q] * absmax
    nblocks = x.shape[0] * x.shape[1]
    return _unblock(out, matrix.shape), nblocks * (packed_nbytes(block, 4) + 2)


# ------------------------------------------------------------------------------------------------ transform code


@dataclass
class TransformCode:
    """A transform-coded ``V x H`` matrix; every field is stored (see :func:`nbytes`).

    Attributes:
        mean: ``(H,)`` fp16 mean row.
        basis: ``(K, H)`` fp16 decoding basis of the ``K`` coded components (row ``j`` = component ``j``).
        comp_scale: ``(K,)`` fp16 scale of each coded component.
        row_scale: ``(V,)`` fp16 scale of each row.
        layout: ``(G, 2)`` int32, per band group: number of components, bits.
        codes: per group, ``(V, n * bits / 8)`` uint8 packed level indices.
        codebooks: per group, ``(2**bits,)`` fp16 levels.
    """

    mean: torch.Tensor
    basis: torch.Tensor
    comp_scale: torch.Tensor
    row_scale: torch.Tensor
    layout: torch.Tensor
    codes: list[torch.Tensor]
    codebooks: list[torch.Tensor]

    @property
    def shape(self) -> tuple[int, int]:
        """``(V, H)`` of the encoded matrix."""
        return self.row_scale.shape[0], self.mean.shape[0]


#: The :class:`TransformCode` fields stored as one tensor each, under their own name (see :func:`to_tensors`).
_PLAIN_FIELDS = ("mean", "basis", "comp_scale", "row_scale", "layout")


def _sqrt_psd(metric: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M^{1/2}, M^{-1/2})`` of a PSD metric normalised to mean eigenvalue 1, with a relative ridge."""
    m = metric.double().cpu()
    m = m / (m.trace() / m.shape[0]) + ridge * torch.eye(m.shape[0], dtype=m.dtype)
    vals, vecs = torch.linalg.eigh(m)
    vals = vals.clamp_min(ridge)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T


def _row_slices(rows: int) -> list[slice]:
    return [slice(start, min(rows, start + CHUNK_ROWS)) for start in range(0, rows, CHUNK_ROWS)]


def _mean_and_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp16 mean row and the row covariance around it (float64, on the CPU) in two chunked passes: the
    column sums, then float32 Gram products of centred chunks summed in float64 (about 4x faster than a
    float64 Gram matrix, and no cancellation since the chunks are centred first)."""
    rows = x.shape[0]
    mean = (sum(x[sl].double().sum(0) for sl in _row_slices(rows)) / rows).half().cpu()
    centre = mean.float().to(x.device)
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for sl in _row_slices(rows):
        chunk = x[sl].float() - centre
        cov += (chunk.T @ chunk).double().cpu()
    return mean, cov / rows


def _principal_basis(cov: torch.Tensor, metric: torch.Tensor | None, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoding basis ``B`` (rows = components, descending variance) and the component variances.

    Coefficients ``z = x B^{-1}`` are uncorrelated and their squared error equals the metric error of ``x``.
    """
    h = cov.shape[0]
    root, inv_root = (torch.eye(h, dtype=torch.float64),) * 2
    if metric is not None:
        root, inv_root = _sqrt_psd(metric, ridge)
    vals, vecs = torch.linalg.eigh(root @ cov @ root)
    order = vals.argsort(descending=True)
    return vecs[:, order].T @ inv_root, vals[order].clamp_min(0)


def _coefficients(x: torch.Tensor, mean: torch.Tensor, basis16: torch.Tensor, k: int) -> torch.Tensor:
    """``z = (x - mean) B^{-1}`` on the first ``k`` components, float32 on the CPU, a chunk of rows at a time
    (on the matrix's device)."""
    proj = torch.linalg.inv(basis16.double())[:, :k].float().to(x.device)
    z = torch.empty(x.shape[0], k)
    for sl in _row_slices(x.shape[0]):
        z[sl] = ((x[sl].float() - mean.float().to(x.device)) @ proj).cpu()
    return z


def _groups(bits: list[int]) -> list[tuple[int, int]]:
    """Runs of equal bits (bands are in descending variance order) as ``(components, bits)``, zero-bit tail cut."""
    return [(BAND * len(list(run)), b) for b, run in groupby(b for b in bits if b)]


def _gauss_init(levels: int) -> torch.Tensor:
    p = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    return math.sqrt(2) * torch.erfinv(2 * p - 1)


def kmeans_1d(values: torch.Tensor, weights: torch.Tensor, levels: int, iters: int = 20) -> torch.Tensor:
    """Weighted 1-D k-means (Lloyd-Max on the empirical distribution); returns sorted float32 levels."""
    v, w = values.double().flatten(), weights.double().flatten()
    c = _gauss_init(levels) * v.std()
    for _ in range(iters):
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
        num = torch.zeros(levels, dtype=v.dtype).index_add_(0, idx, v * w)
        den = torch.zeros(levels, dtype=v.dtype).index_add_(0, idx, w)
        c = torch.where(den > 0, num / den.clamp_min(1e-30), c).sort().values
    return c.float()


def grid_levels(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Snap a codebook onto the int8 grid ``step * n`` (``n`` in ``[-127, 127]``, ``step = max|level| / 127``).

    Returns ``(snapped levels, step)``. A snapped codebook makes every coded value an int8 times a
    per-component factor, which the serving kernel multiplies without de-quantizing (see
    :func:`embcompress.quant.int8_matmul_t`); on MiniLM at 4 bits per weight the squared error grew 0.07%.
    Differentiable in ``levels`` (straight-through).
    """
    step = levels.detach().abs().amax().clamp_min(1e-30) / 127
    snapped = torch.round(levels.detach() / step) * step
    return levels + (snapped - levels).detach(), step


def _nearest(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(u.contiguous(), (levels[1:] + levels[:-1]) / 2)


def _sample(n: int, k: int) -> torch.Tensor:
    """``k`` seeded indices below ``n`` (drawn with replacement: a permutation of ``n`` would hold ``n``
    int64s, more than the matrix for a large vocabulary), or all of them when ``n <= k``."""
    return torch.randint(n, (k,), generator=torch.Generator().manual_seed(0)) if n > k else torch.arange(n)


def _fit_codebooks(
    z: torch.Tensor, row_scale: torch.Tensor, comp_scale: torch.Tensor, groups: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """One k-means codebook per group on a fixed-size sample of the normalised values ``z / scales``.

    Values are weighted by their squared total scale, so the codebook minimises the error of ``z`` itself.
    """
    books, start = [], 0
    for n, b in groups:
        pick = _sample(z.shape[0] * n, SAMPLE)
        r, c = pick // n, start + pick % n
        scale = row_scale[r] * comp_scale[c]
        books.append(grid_levels(kmeans_1d(z[r, c] / scale, scale**2, 2**b))[0].half())
        start += n
    return books


def _quantize(
    z: torch.Tensor, row_scale: torch.Tensor, comp_scale: torch.Tensor, books: list[torch.Tensor], groups: list
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Level indices per group and the reconstruction of ``z`` (normalised by the scales)."""
    u = z / (row_scale[:, None] * comp_scale[None, :])
    idx, recon, start = [], torch.empty_like(u), 0
    for (n, _), book in zip(groups, books, strict=True):
        lv = book.float()
        q = _nearest(u[:, start : start + n], lv)
        idx.append(q)
        recon[:, start : start + n] = lv[q]
        start += n
    return idx, recon


def _refit_row_scales(
    z: torch.Tensor, row_scale: torch.Tensor, comp_scale: torch.Tensor, books: list[torch.Tensor], groups: list
) -> torch.Tensor:
    """Least-squares row scales given the chosen levels: ``argmin_s |z - s * c|^2`` with ``c = level * comp_scale``."""
    out = torch.empty_like(row_scale)
    for sl in _row_slices(z.shape[0]):
        _, recon = _quantize(z[sl], row_scale[sl], comp_scale, books, groups)
        c = recon * comp_scale[None, :]
        s = (z[sl] * c).sum(-1) / (c * c).sum(-1).clamp_min(1e-30)
        out[sl] = s.clamp_min(1e-8).half().float()
    return out


def _pack_all(
    z: torch.Tensor, row_scale: torch.Tensor, comp_scale: torch.Tensor, books: list[torch.Tensor], groups: list
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The packed codes of every group, and the per-component gain ``sum z^2 / sum z z_hat`` that makes the
    reconstruction error uncorrelated with ``z`` (Lloyd-Max levels shrink every component toward zero)."""
    codes = [torch.empty(z.shape[0], packed_nbytes(n, b), dtype=torch.uint8) for n, b in groups]
    energy, cross = torch.zeros(z.shape[1], dtype=torch.float64), torch.zeros(z.shape[1], dtype=torch.float64)
    for sl in _row_slices(z.shape[0]):
        idx, recon = _quantize(z[sl], row_scale[sl], comp_scale, books, groups)
        for packed, q, (_, b) in zip(codes, idx, groups, strict=True):
            packed[sl] = pack_bits(q, b)
        energy += z[sl].to(torch.float64, copy=True).square_().sum(0)
        cross += (z[sl] * recon * row_scale[sl, None] * comp_scale).double().sum(0)
    return codes, (energy / cross.clamp_min(1e-30)).float()


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A seeded random ``n x n`` rotation (float64): a randomised Hadamard ``H diag(+-1) / sqrt(n)`` when ``n``
    is a power of two, else the Q factor of a Gaussian matrix (sign-fixed, so Haar-distributed)."""
    gen = torch.Generator().manual_seed(seed)
    if n & (n - 1) == 0:
        had = torch.ones(1, 1, dtype=torch.float64)
        while had.shape[0] < n:
            had = torch.cat([torch.cat([had, had], 1), torch.cat([had, -had], 1)])
        signs = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
        return signs[:, None] * had / math.sqrt(n)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _rotate_groups(basis: torch.Tensor, variances: torch.Tensor, groups: list, seed: int) -> torch.Tensor:
    """Fold a random rotation of each group's whitened coefficients into the decoding basis.

    The principal coefficients of a group (equal bits) are scaled to unit variance and rotated, which makes
    them close to Gaussian (PCA coefficients of embeddings are heavy-tailed) -- the distribution a fixed-rate
    Lloyd-Max codebook quantizes best. Decoding is unchanged: ``z' B' = z B``.
    """
    out, start = basis.clone(), 0
    std = variances.sqrt().clamp_min(1e-6 * float(variances.max().sqrt()))
    for g, (n, _) in enumerate(groups):
        rows = slice(start, start + n)
        out[rows] = random_orthogonal(n, seed + g).T @ (std[rows, None] * basis[rows])
        start += n
    return out


def _scales(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial fp16-representable per-component (standard deviation) and per-row (RMS) scales of ``z``."""
    rows = z.shape[0]
    slices = _row_slices(rows)
    mean = sum(z[sl].double().sum(0) for sl in slices) / rows
    var = sum(z[sl].to(torch.float64, copy=True).sub_(mean).square_().sum(0) for sl in slices) / max(1, rows - 1)
    comp_scale = var.sqrt().float().clamp_min(1e-8).half().float()
    row_scale = torch.cat([(z[sl] / comp_scale).square_().mean(-1).sqrt() for sl in slices])
    return comp_scale, row_scale.clamp_min(1e-8).half().float()


def total_nbytes(rows: int, cols: int, groups: list[tuple[int, int]]) -> int:
    """Exact stored bytes of a transform code with this group layout: the mean, basis, scales, layout and
    codebooks, and the packed codes."""
    k = sum(n for n, _ in groups)
    overhead = 2 * cols + 2 * k * cols + 2 * k + 2 * rows + 8 * len(groups) + sum(2 * 2**b for _, b in groups)
    return overhead + rows * sum(packed_nbytes(n, b) for n, b in groups)


def _fit_groups(rows: int, cols: int, variances: torch.Tensor, budget_bytes: int, max_bits: int) -> list:
    """Greedy reverse water-filling with exact byte accounting: repeatedly give one more bit to the band
    whose Lloyd-Max distortion drops most, among the increments whose total stored bytes (codes, basis
    rows, scales, codebooks) still fit ``budget_bytes``. A larger budget never gives a worse allocation."""
    band_var = variances.double().reshape(-1, BAND).mean(-1).tolist()
    bits = [0] * len(band_var)
    while True:
        best, gain = -1, 0.0
        for i, b in enumerate(bits):
            if b >= max_bits or (i and bits[i - 1] == 0):
                continue
            g = band_var[i] * (GAUSS_DISTORTION[b] - GAUSS_DISTORTION[b + 1])
            if g > gain and total_nbytes(rows, cols, _groups([*bits[:i], b + 1, *bits[i + 1 :]])) <= budget_bytes:
                best, gain = i, g
        if best < 0:
            return _groups(bits)
        bits[best] += 1


def encode(
    matrix: torch.Tensor,
    bits_per_weight: float = 4.0,
    metric: torch.Tensor | None = None,
    *,
    max_bytes: int | None = None,
    max_bits: int = 8,
    ridge: float = 1e-3,
    iters: int = 2,
    rotate: bool = True,
    debias: bool = True,
    seed: int = 0,
) -> TransformCode:
    """Transform-code ``matrix`` (``V x H``, ``H`` a multiple of 8) within a byte budget.

    Args:
        matrix: the embedding matrix.
        bits_per_weight: total budget in bits per matrix entry, all overhead included.
        metric: optional ``H x H`` PSD error metric (e.g. ``E[h h^T]`` of the hidden states an LM head sees);
            ``None`` means plain squared error.
        max_bytes: explicit byte budget (overrides ``bits_per_weight``).
        max_bits: largest bit width of a band.
        ridge: relative ridge added to the normalised metric (keeps its inverse root bounded; larger values
            shrink the metric toward plain squared error).
        iters: alternations of codebook / row-scale refits.
        rotate: rotate each group's whitened coefficients by a seeded random rotation (no stored byte).
        debias: rescale each component so that its error is uncorrelated with it (no stored byte).
        seed: seed of the rotations.

    Returns:
        the :class:`TransformCode`; ``nbytes(code) <= budget``.
    """
    rows, cols = matrix.shape
    x = matrix.detach()
    mean, cov = _mean_and_covariance(x)
    basis, variances = _principal_basis(cov, metric, ridge)
    budget = max_bytes if max_bytes is not None else int(bits_per_weight * rows * cols / 8)
    groups = _fit_groups(rows, cols, variances, budget, max_bits)
    if not groups:
        raise ValueError(f"a budget of {budget} bytes leaves no bits for the codes of a {rows}x{cols} matrix")
    k = sum(n for n, _ in groups)
    basis = _rotate_groups(basis, variances, groups, seed) if rotate else basis
    # Unit rows: the component scales carry the magnitudes, so every float part trains at a comparable
    # relative step (Adam's steps are absolute: rows as small as a component's spread diverged at lr 3e-3).
    basis16 = (basis / basis.norm(dim=1, keepdim=True).clamp_min(1e-30)).half()
    z = _coefficients(x, mean, basis16, k)
    comp_scale, row_scale = _scales(z)
    for _ in range(max(1, iters)):
        books = _fit_codebooks(z, row_scale, comp_scale, groups)
        row_scale = _refit_row_scales(z, row_scale, comp_scale, books, groups)
    codes, gain = _pack_all(z, row_scale, comp_scale, books, groups)
    return TransformCode(
        mean=mean,
        basis=basis16[:k],
        comp_scale=(comp_scale * gain if debias else comp_scale).half(),
        row_scale=row_scale.half(),
        layout=torch.tensor(groups, dtype=torch.int32).reshape(-1, 2),
        codes=codes,
        codebooks=books,
    )


def decode_rows(code: TransformCode, ids: torch.Tensor) -> torch.Tensor:
    """Decode only rows ``ids`` (any shape) to float32 ``(*ids.shape, H)`` without building the full matrix."""
    flat = ids.reshape(-1).long()
    groups = zip(code.layout.tolist(), code.codes, code.codebooks, strict=True)
    parts = [grid_levels(book.float())[0][unpack_bits(packed[flat], b, n)] for (n, b), packed, book in groups]
    u = torch.cat(parts, -1) if parts else torch.zeros(flat.numel(), 0)
    z = u * code.row_scale.float()[flat, None] * code.comp_scale.float()[None, :]
    out = z @ code.basis.float() + code.mean.float()
    return out.reshape(*ids.shape, -1)


def decode(code: TransformCode, chunk: int = 8192) -> torch.Tensor:
    """The full de-quantized ``V x H`` matrix (decoded in chunks of rows)."""
    return torch.cat([decode_rows(code, ids) for ids in torch.arange(code.shape[0]).split(chunk)])


def to_tensors(code: TransformCode) -> dict[str, torch.Tensor]:
    """Flat ``name -> tensor`` state dict (safetensors-ready); exactly the stored bytes."""
    out = {name: getattr(code, name) for name in _PLAIN_FIELDS}
    for g, (packed, book) in enumerate(zip(code.codes, code.codebooks, strict=True)):
        out[f"codes.{g}"] = packed
        out[f"codebook.{g}"] = book
    return out


def from_tensors(tensors: dict[str, torch.Tensor]) -> TransformCode:
    """Inverse of :func:`to_tensors`."""
    groups = range(tensors["layout"].shape[0])
    return TransformCode(
        **{name: tensors[name] for name in _PLAIN_FIELDS},
        codes=[tensors[f"codes.{g}"] for g in groups],
        codebooks=[tensors[f"codebook.{g}"] for g in groups],
    )


def nbytes(code: TransformCode) -> int:
    """Stored size in bytes: the sum of :func:`to_tensors`' tensor sizes."""
    return sum(t.numel() * t.element_size() for t in to_tensors(code).values())


# ------------------------------------------------------------------------------------------------ head rows

#: Importance of the token at priority rank ``r`` (``r = 0`` first) in the model that sizes the head rows:
#: ``(1 - HEAD_FLOOR) * zipf(r) + HEAD_FLOOR / V`` with ``zipf(r) ~ 1 / (r + ZIPF_OFFSET)``; the floor is the
#: share of a text's tokens assumed to fall anywhere in the vocabulary, whatever the priority says.
ZIPF_OFFSET, HEAD_FLOOR = 10.0, 0.1
#: Distortion of an int8 head row in the sizing model (``2 ** -16``: 8 bits, relative to the variance).
HEAD_DISTORTION = 2.0**-16


@dataclass
class HeadRows:
    """Rows stored whole at per-row int8 precision (the most important tokens).

    Attributes:
        ids: ``(N,)`` int32 token ids, ascending.
        values: ``(N, H)`` int8 values.
        scale: ``(N,)`` fp16 per-row scale (``row = values * scale``).
    """

    ids: torch.Tensor
    values: torch.Tensor
    scale: torch.Tensor


def head_nbytes(rows: int, cols: int) -> int:
    """Stored bytes of ``rows`` head rows: int8 values, an fp16 scale and an int32 id each."""
    return rows * (cols + 2 + 4)


def quantize_head(matrix: torch.Tensor, ids: torch.Tensor) -> HeadRows:
    """Rows ``ids`` of ``matrix`` as :class:`HeadRows` (symmetric per-row int8 on the fp16-rounded scale)."""
    ids = ids.to(torch.int64).sort().values
    x = matrix[ids.to(matrix.device)].detach().float().cpu()
    scale = (x.abs().amax(1) / 127).clamp_min(1e-12).half()
    values = torch.round(x / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return HeadRows(ids.to(torch.int32), values, scale)


def head_rows_for(rows: int, cols: int, budget: int) -> int:
    """How many of the most important rows to store whole within ``budget`` bytes.

    Minimises the expected distortion ``sum_r w_r D_r`` of a two-tier code under the Zipf importance model
    (:data:`ZIPF_OFFSET`, :data:`HEAD_FLOOR`): the first ``N`` rows at int8 (:data:`HEAD_DISTORTION`), the
    others at the bits left after the head rows and a decoding basis, ``D = 2 ** (-2 * bits)``. Candidates are
    0 and ``2 ** (k / 4)``; measured on SmolLM2 the optimum (2048 rows at 8x) took the LM head's KL from 0.052
    to 0.016 (mean of four corpora), rows beyond it changed little.
    """
    ranks = torch.arange(rows, dtype=torch.float64)
    zipf = 1.0 / (ranks + ZIPF_OFFSET)
    weights = (1 - HEAD_FLOOR) * zipf / zipf.sum() + HEAD_FLOOR / rows
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[n] = weight of rows n..V-1
    best, best_cost = 0, math.inf
    for n in sorted({0, *(int(2 ** (k / 4)) for k in range(16, 4 * int(math.log2(rows)) + 1)), rows - 1} - {rows}):
        bulk_bits = (8 * (budget - head_nbytes(n, cols)) - 16 * cols * cols) / max(1, (rows - n) * cols)
        if bulk_bits <= 0:
            break
        cost = float(weights[:n].sum()) * HEAD_DISTORTION + float(tail[n]) * 2.0 ** (-2 * bulk_bits)
        if cost < best_cost:
            best, best_cost = n, cost
    return best


def decode_head(head: HeadRows) -> torch.Tensor:
    """The head rows as float32 ``(N, H)``."""
    return head.values.float() * head.scale.float()[:, None]


#: The deployed quantizers every report compares against, by name: ``(dequantized, stored bytes)``.
REFERENCE_SCHEMES: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, int]]] = {
    "int8": lambda m: quantize_per_row(m, 8),
    "q8_0": quantize_q8_0,
    "q4_0": quantize_q4_0,
    "nf4": quantize_nf4,
    "int4": lambda m: quantize_per_row(m, 4),
}


#: How each reference scheme is named in tables and plots.
SCHEME_LABELS: dict[str, str] = {
    "int8": "per-row int8",
    "q8_0": "Q8_0 (blocks of 32)",
    "q4_0": "Q4_0 (blocks of 32)",
    "nf4": "NF4 (blocks of 64)",
    "int4": "per-row int4",
}


#: Rows quantized at once by :func:`reference_quantize` (every scheme works within rows, so this is exact):
#: whole-matrix temporaries of a 262144 x 640 matrix took 5.6 GB and 15-41 s per scheme, chunks ~10x less time.
REFERENCE_CHUNK_ROWS = 4096


def reference_quantize(name: str, matrix: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Quantize ``matrix`` with the reference scheme ``name`` (see :data:`REFERENCE_SCHEMES`), a chunk of
    :data:`REFERENCE_CHUNK_ROWS` rows at a time into one float32 result (the same values as all at once)."""
    if name not in REFERENCE_SCHEMES:
        raise ValueError(f"unknown reference scheme '{name}'; valid: {', '.join(REFERENCE_SCHEMES)}")
    scheme = REFERENCE_SCHEMES[name]
    if matrix.dim() != 2 or matrix.shape[0] <= REFERENCE_CHUNK_ROWS:
        return scheme(matrix)
    out = torch.empty(matrix.shape, dtype=torch.float32, device=matrix.device)
    nbytes = 0
    with torch.no_grad():
        for start in range(0, matrix.shape[0], REFERENCE_CHUNK_ROWS):
            part, size = scheme(matrix[start : start + REFERENCE_CHUNK_ROWS].detach())
            out[start : start + part.shape[0]] = part
            nbytes += size
    return out, nbytes
