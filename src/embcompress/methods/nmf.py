"""Non-negative matrix factorization of a column-shifted embedding: ``E ~ W H - c`` with ``W, H >= 0``.

Embeddings have negative entries, so each column ``j`` is shifted by ``c_j = max(0, -min_i E_ij)``
(the module's ``offset``): ``E + c >= 0`` is factorized as ``W H`` and the lookup subtracts ``c``.
The shift costs ``H`` floats (a sign split ``[E+, E-]`` would double the basis instead) and keeps
the stored factors non-negative, in every factor dtype (int8 rows are quantized symmetrically, so
non-negative values stay non-negative).

Two solvers: ``hals`` (default; hierarchical alternating least squares in torch, NNDSVDa start)
and ``sklearn`` (``sklearn.decomposition.NMF``, coordinate descent), kept as the reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar, cast

import torch

from ..errors import EmbcompressError
from ..spectral import truncated_svd
from .base import FactorizationMethod, Factors, FitContext, MethodOptions

logger = logging.getLogger(__name__)

NMF_SOLVERS = ("hals", "sklearn")
DEFAULT_MAX_ITER = 200
DEFAULT_TOL = 1e-5


@dataclass
class NMFOptions(MethodOptions):
    """Options of ``nmf``.

    Attributes:
        solver: ``hals`` (torch HALS, NNDSVDa start) or ``sklearn`` (scikit-learn's coordinate descent).
        max_iter: Iteration limit of the solver (at least 1).
        tol: HALS stops when the relative error improves by less than this share (positive).
    """

    label: ClassVar[str] = "nmf"

    solver: str = "hals"
    max_iter: int = DEFAULT_MAX_ITER
    tol: float = DEFAULT_TOL

    def validate(self) -> None:
        if self.solver not in NMF_SOLVERS:
            raise EmbcompressError(f"unknown nmf solver '{self.solver}'; valid: {', '.join(NMF_SOLVERS)}")
        if self.max_iter < 1:
            raise EmbcompressError(f"nmf option max_iter must be at least 1, got {self.max_iter}")
        if not self.tol > 0:
            raise EmbcompressError(f"nmf option tol must be positive, got {self.tol}")


def column_shift(matrix: torch.Tensor) -> torch.Tensor:
    """Per-column shift ``c`` making ``matrix + c`` non-negative (zero for non-negative columns)."""
    return (-matrix.min(dim=0).values).clamp_min(0)


def nndsvda(x: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos 2008), zeros filled with the mean of ``x``."""
    u, s, vh = truncated_svd(x, rank, "auto", seed)
    up, un, vp, vn = u.clamp_min(0), (-u).clamp_min(0), vh.clamp_min(0), (-vh).clamp_min(0)
    up_n, un_n, vp_n, vn_n = up.norm(dim=0), un.norm(dim=0), vp.norm(dim=1), vn.norm(dim=1)
    pos = up_n * vp_n >= un_n * vn_n
    sigma = torch.where(pos, up_n * vp_n, un_n * vn_n)
    uu = torch.where(pos, up / up_n.clamp_min(1e-12), un / un_n.clamp_min(1e-12))
    vv = torch.where(pos[:, None], vp / vp_n[:, None].clamp_min(1e-12), vn / vn_n[:, None].clamp_min(1e-12))
    lam = (s * sigma).sqrt()
    w, h = uu * lam, lam[:, None] * vv
    mean = float(x.mean())
    return w.masked_fill(w < 1e-12, mean), h.masked_fill(h < 1e-12, mean)


def _hals_sweep(rows: torch.Tensor, num: torch.Tensor, gram: torch.Tensor) -> None:
    """One HALS sweep over the rows ``k`` of a factor stored as ``r x n`` (contiguous rows).

    Solves ``min ||X - F.T G||`` for ``F = rows`` with ``num = G X.T`` and ``gram = G G.T``, one row at
    a time in closed form, clipped at zero.
    """
    for k in range(rows.shape[0]):
        step = (num[k] - gram[k] @ rows) / gram[k, k].clamp_min(1e-12)
        rows[k] = (rows[k] + step).clamp_min_(1e-12)


def hals_nmf(
    x: torch.Tensor, rank: int, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ w @ h`` with ``w, h >= 0`` by HALS (Cichocki & Phan 2009); stops when the error stalls.

    Both factors are kept as ``r x n`` row-major tensors so each HALS row update reads contiguous memory;
    the error is tracked from the Gram matrices (no reconstruction).
    """
    w, h = nndsvda(x, rank, seed)
    wt, x_norm2 = w.T.contiguous(), float(x.pow(2).sum())
    prev = float("inf")
    for it in range(max_iter):
        _hals_sweep(wt, h @ x.T, h @ h.T)
        num = wt @ x
        gram = wt @ wt.T
        _hals_sweep(h, num, gram)
        if it % 10 == 9 or it == max_iter - 1:
            err = (x_norm2 - 2 * float((num * h).sum()) + float((gram * (h @ h.T)).sum())) / max(x_norm2, 1e-30)
            logger.debug("HALS iteration %d: relative squared error %.5f", it + 1, err)
            if prev - err < tol * prev:
                break
            prev = err
    return wt.T.contiguous(), h


def sklearn_nmf(x: torch.Tensor, rank: int, max_iter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference solver: scikit-learn's coordinate-descent NMF with NNDSVDa initialisation."""
    try:
        from sklearn.decomposition import NMF  # optional: only this reference solver needs scikit-learn
    except ImportError:
        raise EmbcompressError(
            "NMF solver 'sklearn' needs scikit-learn: pip install 'embcompress[sklearn]' (or use solver=hals)"
        ) from None

    model = NMF(n_components=rank, init="nndsvda", solver="cd", max_iter=max_iter, random_state=seed)
    w = model.fit_transform(x.cpu().numpy())
    return torch.from_numpy(w).to(x), torch.from_numpy(model.components_).to(x)


class NMFMethod(FactorizationMethod):
    """NMF of the column-shifted matrix; factors stored non-negative, shift stored as the offset."""

    name: ClassVar[str] = "nmf"
    description: ClassVar[str] = "non-negative factors of E + c (per-column shift c stored as the offset)"
    options_class: ClassVar[type[MethodOptions]] = NMFOptions
    uses_offset: ClassVar[bool] = True

    def fit(self, matrix: torch.Tensor, rank: int, ctx: FitContext) -> Factors:
        x = matrix.detach().float()
        shift = column_shift(x)
        shifted = x + shift
        opts = cast(NMFOptions, self.options_of(ctx))
        start = time.perf_counter()
        if opts.solver == "sklearn":
            w, h = sklearn_nmf(shifted, rank, opts.max_iter, ctx.seed)
        else:
            w, h = hals_nmf(shifted, rank, opts.max_iter, opts.tol, ctx.seed)
        logger.info("nmf (%s) rank %d fitted in %.1fs", opts.solver, rank, time.perf_counter() - start)
        return Factors(codes=w.clamp_min(0), basis=h.clamp_min(0), offset=shift)
