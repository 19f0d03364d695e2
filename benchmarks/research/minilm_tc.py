"""Research copy of the transform code (issue #10, MiniLM part): variants of ``embcompress.codec.encode``.

Self-contained (torch only); the base algorithm is that of ``codec.encode`` at commit ec40325 (centre, rotate
onto the principal axes of ``M^{1/2} S M^{1/2}``, greedy reverse water-filling of integer bits over bands of 8,
one Lloyd-Max codebook per equal-bit group snapped onto an int8 grid, fp16 per-component and per-row scales).
Options added here:

* ``rotate``: after normalising by the per-component scale, rotate each equal-bit group by a seeded random
  orthogonal matrix (randomised Hadamard when the group size is a power of 2).  The rotation is folded into the
  stored fp16 decoding basis, so it costs no byte; it makes the coefficients of a group Gaussian-like, which is
  what a fixed-rate Lloyd-Max codebook quantizes best.
* ``block`` / ``block_bits``: per row, one extra scale per block of ``block`` coefficients of a group,
  log-quantized on ``block_bits`` bits relative to the row scale (a 2**block_bits-level log grid per group, fp16
  ends stored); ``block_bits=16`` stores fp16 block scales and drops nothing else.
* ``row_weight``: a per-row importance weight used only by the codebook / scale fits.

Bytes are counted exactly as they would be stored: codes packed, fp16 mean, basis, component and row scales,
fp16 codebooks, int32 layout, block-scale codes packed per row, fp16 log-grid ends per group.
"""

from __future__ import annotations

import math

import torch

GAUSS_DISTORTION = (1.0, 0.3634, 0.1175, 0.03454, 0.009497, 0.002499, 0.000642, 0.000163, 0.0000410)
SAMPLE = 1 << 18
BAND = 8


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _sqrt_psd(metric: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    m = metric.double()
    m = m / (m.trace() / m.shape[0]) + ridge * torch.eye(m.shape[0], dtype=m.dtype)
    vals, vecs = torch.linalg.eigh(m)
    vals = vals.clamp_min(ridge)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs * vals.rsqrt()) @ vecs.T


def principal_basis(xc: torch.Tensor, metric: torch.Tensor | None, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    h = xc.shape[1]
    root, inv_root = (torch.eye(h, dtype=torch.float64),) * 2
    if metric is not None:
        root, inv_root = _sqrt_psd(metric, ridge)
    y = xc.double() @ root
    vals, vecs = torch.linalg.eigh(y.T @ y / xc.shape[0])
    order = vals.argsort(descending=True)
    return vecs[:, order].T @ inv_root, vals[order].clamp_min(0)


def _groups(bits: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in bits:
        if b == 0:
            continue
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0] + BAND, b)
        else:
            out.append((BAND, b))
    return out


def _gauss_init(levels: int) -> torch.Tensor:
    p = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    return math.sqrt(2) * torch.erfinv(2 * p - 1)


def kmeans_1d(values: torch.Tensor, weights: torch.Tensor, levels: int, iters: int = 20) -> torch.Tensor:
    v, w = values.double().flatten(), weights.double().flatten()
    c = _gauss_init(levels) * v.std()
    for _ in range(iters):
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
        num = torch.zeros(levels, dtype=v.dtype).index_add_(0, idx, v * w)
        den = torch.zeros(levels, dtype=v.dtype).index_add_(0, idx, w)
        c = torch.where(den > 0, num / den.clamp_min(1e-30), c).sort().values
    return c.float()


def grid_levels(levels: torch.Tensor) -> torch.Tensor:
    """Snap onto the int8 grid ``step * n``, ``n`` in [-127, 127], ``step = max|level| / 127`` (as codec.py)."""
    step = levels.abs().amax().clamp_min(1e-30) / 127
    return torch.round(levels / step) * step


def _nearest(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(u.contiguous(), (levels[1:] + levels[:-1]) / 2)


def _sample(n: int, k: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k] if n > k else torch.arange(n)


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """Randomised Hadamard (``H diag(+-1) / sqrt(n)``) for ``n`` a power of 2, else a Haar-random orthogonal."""
    gen = torch.Generator().manual_seed(seed)
    if n & (n - 1) == 0:
        had = torch.ones(1, 1, dtype=torch.float64)
        while had.shape[0] < n:
            had = torch.cat([torch.cat([had, had], 1), torch.cat([had, -had], 1)], 0)
        signs = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
        return (signs[:, None] * had) / math.sqrt(n)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _blocks_of(groups: list[tuple[int, int]], block: int | None) -> list[tuple[int, int, int]]:
    """``(group index, start, stop)`` of every scale block (component indices over all coded components)."""
    out, start = [], 0
    for g, (n, _) in enumerate(groups):
        size = block if block else n
        for s in range(start, start + n, size):
            out.append((g, s, min(s + size, start + n)))
        start += n
    return out


def total_nbytes(rows: int, cols: int, groups: list[tuple[int, int]], block: int | None, block_bits: int) -> int:
    k = sum(n for n, _ in groups)
    over = 2 * cols + 2 * k * cols + 2 * k + 2 * rows + 8 * len(groups) + sum(2 * 2**b for _, b in groups)
    codes = rows * sum(packed_nbytes(n, b) for n, b in groups)
    scales = 0
    if block and block_bits:
        nblk = len(_blocks_of(groups, block))
        scales = rows * packed_nbytes(nblk, block_bits) + (0 if block_bits == 16 else 4 * len(groups))
    return over + codes + scales


def fit_groups(rows: int, cols: int, variances: torch.Tensor, budget: int, max_bits: int, block, block_bits) -> list:
    band_var = variances.double().reshape(-1, BAND).mean(-1).tolist()
    bits = [0] * len(band_var)
    while True:
        best, gain = -1, 0.0
        for i, b in enumerate(bits):
            if b >= max_bits or (i and bits[i - 1] == 0):
                continue
            g = band_var[i] * (GAUSS_DISTORTION[b] - GAUSS_DISTORTION[b + 1])
            trial = _groups([*bits[:i], b + 1, *bits[i + 1 :]])
            if g > gain and total_nbytes(rows, cols, trial, block, block_bits) <= budget:
                best, gain = i, g
        if best < 0:
            return _groups(bits)
        bits[best] += 1


def _quantize_log(ratio: torch.Tensor, bits: int) -> tuple[torch.Tensor, float, float]:
    """Nearest of ``2**bits`` log-uniform levels between fp16 ends (the ends are stored)."""
    lr = ratio.clamp_min(1e-6).log()
    lo, hi = float(torch.quantile(lr.flatten()[:1_000_000], 0.001)), float(lr.max())
    lo, hi = float(torch.tensor(lo).half()), float(torch.tensor(hi).half())
    n = 2**bits - 1
    q = torch.round((lr.clamp(lo, hi) - lo) / max(hi - lo, 1e-9) * n)
    return torch.exp(lo + q * (hi - lo) / n), lo, hi


def encode(
    matrix: torch.Tensor,
    budget: int,
    metric: torch.Tensor | None = None,
    *,
    rotate: bool = False,
    block: int | None = None,
    block_bits: int = 0,
    max_bits: int = 8,
    ridge: float = 1e-3,
    iters: int = 2,
    seed: int = 0,
    row_weight: torch.Tensor | None = None,
    debias: bool = False,
    basis8: bool = False,
) -> tuple[torch.Tensor, int, dict]:
    """Returns ``(de-quantized matrix, stored bytes, info)``."""
    rows, cols = matrix.shape
    x = matrix.detach().float()
    mean = x.mean(0).half()
    xc = x - mean.float()
    basis, variances = principal_basis(xc, metric, ridge)
    blk = block if block_bits else None
    groups = fit_groups(rows, cols, variances, budget + (cols * cols if basis8 else 0), max_bits, blk, block_bits)
    if basis8:  # shrink the allocation until the int8 basis version fits
        while total_nbytes(rows, cols, groups, blk, block_bits) - sum(n for n, _ in groups) * cols > budget:
            budget -= 64 * rows // 8
            groups = fit_groups(rows, cols, variances, budget + cols * cols, max_bits, blk, block_bits)
    k = sum(n for n, _ in groups)
    full = basis.clone()
    if rotate:
        z0 = xc.double() @ torch.linalg.inv(full)[:, :k]
        cs = z0.std(0)
        start = 0
        for g, (n, _) in enumerate(groups):
            r = random_orthogonal(n, seed + g)
            full[start : start + n] = r.T @ (cs[start : start + n, None] * full[start : start + n])
            start += n
    if basis8:  # int8 basis rows, their absmax / 127 folded into the (fp16) per-component scale: no extra byte
        step = full.abs().amax(1, keepdim=True) / 127
        full = torch.round(full / step) * step
        full16 = full.float()
    else:
        full16 = full.half()
    z = (xc.double() @ torch.linalg.inv(full16.double())[:, :k]).float()
    basis16 = full16[:k]
    comp_scale = z.std(0).clamp_min(1e-8).half().float()
    w_row = torch.ones(rows) if row_weight is None else row_weight.float()
    v = z / comp_scale  # unit-variance coefficients
    blocks = _blocks_of(groups, blk)
    row_scale = v.pow(2).mean(-1).sqrt().clamp_min(1e-8).half().float()
    bscale = torch.ones(rows, len(blocks))

    def scale_matrix() -> torch.Tensor:
        s = torch.empty(rows, k)
        for j, (_, a, b) in enumerate(blocks):
            s[:, a:b] = (row_scale * bscale[:, j])[:, None]
        return s

    if blk:
        for j, (_, a, b) in enumerate(blocks):
            bscale[:, j] = v[:, a:b].pow(2).mean(-1).sqrt() / row_scale
    for _ in range(max(1, iters)):
        if blk:
            bscale, _ = _store_bscale(bscale, blocks, groups, block_bits)
        s = scale_matrix()
        u = v / s
        books, start = [], 0
        for n, b in groups:
            pick = _sample(rows * n, SAMPLE)
            r, c = pick // n, start + pick % n
            w = (s[r, c] * comp_scale[c]) ** 2 * w_row[r]
            books.append(grid_levels(kmeans_1d(u[r, c], w, 2**b)).half().float())
            start += n
        recon = torch.empty_like(u)
        start = 0
        for (n, _), lv in zip(groups, books, strict=True):
            recon[:, start : start + n] = lv[_nearest(u[:, start : start + n], lv)]
            start += n
        # least-squares refit of the scales given the levels (in the z metric: weights comp_scale^2)
        c = recon * comp_scale
        zz = v * comp_scale
        if blk:
            for j, (_, a, b) in enumerate(blocks):
                cj = c[:, a:b] * row_scale[:, None]
                bscale[:, j] = ((zz[:, a:b] * cj).sum(-1) / (cj * cj).sum(-1).clamp_min(1e-30)).clamp_min(1e-6)
        else:
            row_scale = ((zz * c).sum(-1) / (c * c).sum(-1).clamp_min(1e-30)).clamp_min(1e-8).half().float()
    if blk:
        bscale, _ = _store_bscale(bscale, blocks, groups, block_bits)
    s = scale_matrix()
    u = v / s
    recon = torch.empty_like(u)
    start = 0
    for (n, _), lv in zip(groups, books, strict=True):
        recon[:, start : start + n] = lv[_nearest(u[:, start : start + n], lv)]
        start += n
    if debias:  # per-component gain so that the error is uncorrelated with the signal; folded into comp_scale
        zh = recon * s * comp_scale
        gain = (z * z).sum(0) / (z * zh).sum(0).clamp_min(1e-30)
        comp_scale = (comp_scale * gain).half().float()
    approx = (recon * s * comp_scale) @ basis16.float() + mean.float()
    nbytes = total_nbytes(rows, cols, groups, blk, block_bits) - (k * cols if basis8 else 0)
    return approx, nbytes, {"layout": [list(g) for g in groups], "k": k}


def _store_bscale(bscale: torch.Tensor, blocks: list, groups: list, bits: int) -> tuple[torch.Tensor, list]:
    """Block scales as stored: fp16 (bits 16) or log-quantized per group."""
    if bits == 16:
        return bscale.half().float().clamp_min(1e-6), []
    out, ends = bscale.clone(), []
    for g in range(len(groups)):
        cols = [j for j, (gg, _, _) in enumerate(blocks) if gg == g]
        q, lo, hi = _quantize_log(bscale[:, cols], bits)
        out[:, cols] = q
        ends.append((lo, hi))
    return out, ends
