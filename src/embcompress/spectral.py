"""Spectral math on embedding matrices: truncated SVD, singular values, energy curves, break-even ranks.

A leaf module: it imports nothing from embcompress, and every layer that needs a spectrum uses it.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

#: Above this many multiply-adds for the Gram matrix, the randomized solver is used.
GRAM_FLOP_LIMIT = 2e11
_CHUNK_ROWS = 16384


def gram_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """``M.T @ M`` in float64, accumulated over row chunks to bound memory."""
    cols = matrix.shape[1]
    gram = torch.zeros(cols, cols, dtype=torch.float64, device=matrix.device)
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        chunk = matrix[start : start + _CHUNK_ROWS].double()
        gram += chunk.T @ chunk
    return gram


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """All singular values of ``matrix`` (descending), from the eigenvalues of its Gram matrix."""
    evals = torch.linalg.eigvalsh(gram_matrix(matrix))
    return evals.clamp_min(0).sqrt().flip(0).float()


def _svd_gram(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(gram_matrix(matrix))
    evals, evecs = evals.flip(0)[:rank].clamp_min(0), evecs.flip(1)[:, :rank]
    s = evals.sqrt()
    v = evecs.to(matrix.dtype)
    u = (matrix @ v) / s.clamp_min(1e-12).to(matrix.dtype)
    return u, s.to(matrix.dtype), v.T


def _svd_randomized(
    matrix: torch.Tensor, rank: int, seed: int, oversample: int = 10, niter: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's CPU generator
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(matrix, q=min(rank + oversample, min(matrix.shape)), niter=niter)
    return u[:, :rank], s[:rank], v[:, :rank].T


def truncated_svd(
    matrix: torch.Tensor, rank: int, solver: str = "auto", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD ``(U, S, Vh)`` of a float matrix.

    ``solver``: ``"gram"`` (exact, eigen-decomposition of ``M.T M`` in float64; fast when one
    side is small), ``"randomized"`` (``torch.svd_lowrank``, for very large matrices),
    ``"full"`` (``torch.linalg.svd``) or ``"auto"``.
    """
    m = matrix.detach().float()
    rows, cols = m.shape
    if solver == "auto":
        solver = "gram" if rows * cols * cols <= GRAM_FLOP_LIMIT else "randomized"
    logger.debug("truncated SVD of %dx%d at rank %d with the %s solver", rows, cols, rank, solver)
    if solver == "gram":
        if cols > rows:
            u, s, vh = _svd_gram(m.T, rank)
            return vh.T, s, u.T
        return _svd_gram(m, rank)
    if solver == "randomized":
        return _svd_randomized(m, rank, seed)
    if solver == "full":
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    raise ValueError(f"unknown SVD solver '{solver}'; valid: auto, gram, randomized, full")


def weighted_singular_values(matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Singular values of ``diag(sqrt w) E`` (descending), for weighted energy budgets."""
    return singular_values(matrix.detach().float() * weights.to(matrix.device).float().sqrt()[:, None])


def energy_curve(singular: torch.Tensor) -> torch.Tensor:
    """Cumulative share of spectral energy (sum of squared singular values) kept by each rank."""
    energy = singular.double().pow(2)
    return (energy.cumsum(0) / energy.sum().clamp_min(1e-30)).float()


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping at least ``energy`` of the spectral energy."""
    curve = energy_curve(singular)
    return int(torch.searchsorted(curve, torch.tensor(energy - 1e-7, dtype=curve.dtype)).item()) + 1


def break_even_rank(rows: int, cols: int, params_per_rank: int) -> int:
    """Largest rank whose factors hold fewer parameters than the dense matrix."""
    return max(0, math.ceil(rows * cols / params_per_rank) - 1)
