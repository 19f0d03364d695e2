"""Learned nonlinear factorization (Distilled Embedding; optional DeFINE-style deeper expansion).

Each token keeps an ``r``-dimensional code; a small decoder maps codes to the hidden size::

    z_1 = act(codes @ W_in.T + b_in)                      # map layer, r -> m
    z_l = act(G_l(z_{l-1}) + g_l) + z_1    (l = 2..depth)  # grouped linear layers, skip to the map layer
    E_hat = codes @ basis + z_depth @ W_out.T + b_out      # linear path + reduction m -> H

``codes``/``basis`` start from the truncated SVD and ``W_out`` from zero, so the fit starts at the
SVD optimum; large-batch Adam (4096 sampled rows per step by default, ``batch_rows=0`` for full
batch) on the reconstruction loss (relative MSE, optional cosine term, optional row weights) then
trains codes, basis and decoder together. The full-matrix loss is evaluated about ten times and the
best evaluated state is kept, so the result is never worse than the SVD start. ``depth=1`` is the Distilled
Embedding decoder; ``depth>1`` with ``groups>1`` is the DeFINE-style hierarchy.

Serving: the lookup decodes only the requested rows, but the LM head (``project``) materialises
the dense ``V x H`` matrix on every call (``serving_dense``): storage shrinks, serving memory does
not unless the dense matrix is cached or exported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModuleSpec
from ..errors import EmbcompressError
from ..modules import FactorizedEmbedding
from ..quant import dtype_from_name
from ..spectral import truncated_svd
from .base import FactorizationMethod, FitContext, MethodOptions
from .svd import balanced_factors

logger = logging.getLogger(__name__)

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}
_CHUNK = 8192


@dataclass
class DecoderOptions(MethodOptions):
    """Options of ``nonlinear``: structure and fit settings of the decoder.

    Attributes:
        hidden: Width ``m`` of the expansion layers (0: ``min(2 * rank, H)`` rounded to ``groups``,
            filled by :meth:`resolved` and recorded in the spec).
        depth: Number of expansion layers (1: Distilled Embedding; >1: DeFINE-style with skips).
        groups: Groups of the grouped linear layers 2..depth (``hidden`` must be divisible by it).
        activation: ``relu`` (default), ``gelu``, ``tanh`` or ``silu``.
        steps: Adam steps of the fit.
        lr: Adam learning rate.
        cosine: Weight of the ``1 - cos(E_t, E_hat_t)`` term added to the relative MSE.
        batch_rows: Rows sampled per Adam step (0: the full matrix every step).
    """

    label: ClassVar[str] = "nonlinear"

    hidden: int = 0
    depth: int = 1
    groups: int = 1
    activation: str = "relu"
    steps: int = 150
    lr: float = 3e-3
    cosine: float = 0.0
    batch_rows: int = 4096

    def validate(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise EmbcompressError(f"unknown activation '{self.activation}'; valid: {', '.join(ACTIVATIONS)}")
        if self.depth < 1 or self.groups < 1 or self.steps < 0 or self.hidden < 0 or not self.lr > 0:
            raise EmbcompressError("nonlinear options depth, groups must be >= 1; steps, hidden >= 0; lr > 0")
        if self.cosine < 0:
            raise EmbcompressError(f"nonlinear option cosine must be >= 0, got {self.cosine}")
        if self.hidden and self.hidden % self.groups:
            raise EmbcompressError(f"nonlinear: hidden {self.hidden} is not divisible by groups {self.groups}")

    def resolved(self, rank: int, cols: int) -> DecoderOptions:
        """A copy with the default ``hidden`` filled for ``rank`` and hidden size ``cols``."""
        if self.hidden:
            return self
        return dataclasses.replace(self, hidden=max(self.groups, min(2 * rank, cols) // self.groups * self.groups))


class NonlinearEmbedding(FactorizedEmbedding):
    """Codes decoded by a linear path plus a small nonlinear decoder (see the module docstring)."""

    def __init__(self, spec: ModuleSpec, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(spec, compute_dtype)
        opts = DecoderOptions.from_dict(spec.options).resolved(spec.rank, spec.embedding_dim)
        self.activation = opts.activation
        store = dtype_from_name(spec.factor_dtype)
        store = torch.float32 if store == torch.int8 else store
        m, h, g = opts.hidden, spec.embedding_dim, opts.groups
        shapes: dict[str, tuple[int, ...]] = {"dec_in_weight": (m, spec.rank), "dec_in_bias": (m,)}
        for layer in range(1, opts.depth):
            shapes[f"dec_group{layer}_weight"] = (g, m // g, m // g)
            shapes[f"dec_group{layer}_bias"] = (m,)
        shapes.update({"dec_out_weight": (h, m), "dec_out_bias": (h,)})
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=store)))
        self.depth = opts.depth

    def _p(self, name: str) -> torch.Tensor:
        return getattr(self, name).to(self.compute_dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows of the approximated matrix for the given code rows."""
        act = ACTIVATIONS[self.activation]
        first = z = act(F.linear(codes, self._p("dec_in_weight"), self._p("dec_in_bias")))
        for layer in range(1, self.depth):
            weight = self._p(f"dec_group{layer}_weight")
            grouped = torch.einsum("...gi,gio->...go", z.unflatten(-1, (weight.shape[0], -1)), weight).flatten(-2)
            z = act(grouped + self._p(f"dec_group{layer}_bias")) + first
        return codes @ self.factor("basis") + F.linear(z, self._p("dec_out_weight"), self._p("dec_out_bias"))

    def dense_rows(self, start: int, stop: int) -> torch.Tensor:
        ids = torch.arange(start, stop, device=self.codes.device)
        return torch.cat([self.rows(c) for c in ids.split(_CHUNK)])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self._factor_rows("codes", ids, self.padding_idx))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ E_hat.T``: materialises the decoded ``V x H`` matrix (``serving_dense``)."""
        return hidden.to(self.compute_dtype) @ self.dense().T

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, depth={self.depth}, activation={self.activation}, serving_dense=True"


def _init_decoder(module: NonlinearEmbedding, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("dec_") and name.endswith("_weight") and name != "dec_out_weight":
                fan_in = param.shape[-2] if param.dim() == 3 else param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))


def _loss(target: torch.Tensor, approx: torch.Tensor, weights: torch.Tensor | None, cosine: float) -> torch.Tensor:
    diff2, ref2 = (target - approx).pow(2).sum(1), target.pow(2).sum(1)
    if weights is not None:
        diff2, ref2 = diff2 * weights, ref2 * weights
    loss = diff2.sum() / ref2.sum().clamp_min(1e-30)
    if cosine:
        cos = F.cosine_similarity(target, approx, dim=1)
        w = weights if weights is not None else torch.ones_like(cos)
        loss = loss + cosine * ((1 - cos) * w).sum() / w.sum()
    return loss


def fit_nonlinear(work: NonlinearEmbedding, matrix: torch.Tensor, opts: DecoderOptions, ctx: FitContext) -> list[float]:
    """Adam on the reconstruction of ``matrix`` by the float32 module ``work``.

    The full-matrix loss is evaluated about ten times (and at the start, the SVD point); the best
    evaluated state is kept in ``work``. Returns the evaluated losses.
    """
    target = matrix.detach().float()
    weights = ctx.row_weights.float().to(target.device) if ctx.row_weights is not None else None
    optim = torch.optim.Adam(work.parameters(), lr=opts.lr)
    gen = torch.Generator().manual_seed(ctx.seed)
    eval_every = max(1, opts.steps // 10)
    best, best_state, history = float("inf"), None, []
    for step in range(opts.steps + 1):
        if step % eval_every == 0 or step == opts.steps:
            with torch.no_grad():
                full = _loss(target, work.decode(work.codes), weights, opts.cosine).item()
            history.append(full)
            if full < best:
                best, best_state = full, {n: p.detach().clone() for n, p in work.named_parameters()}
        if step == opts.steps:
            break
        rows = _batch(target.shape[0], opts.batch_rows, gen, target.device)
        codes, tgt = (work.codes, target) if rows is None else (work.codes[rows], target[rows])
        w = weights if weights is None or rows is None else weights[rows]
        loss = _loss(tgt, work.decode(codes), w, opts.cosine)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if ctx.progress is not None:
            ctx.progress(step + 1, opts.steps, {"loss": loss.item()})
    with torch.no_grad():
        for name, value in (best_state or {}).items():
            getattr(work, name).copy_(value)
    return history


def _batch(rows: int, batch: int, gen: torch.Generator, device: torch.device) -> torch.Tensor | None:
    if batch <= 0 or batch >= rows:
        return None
    return torch.randint(0, rows, (batch,), generator=gen).to(device)


class NonlinearMethod(FactorizationMethod):
    """Distilled-Embedding decoder on SVD-initialised codes, fitted by Adam on the reconstruction."""

    name: ClassVar[str] = "nonlinear"
    description: ClassVar[str] = "per-token codes + nonlinear decoder (Distilled Embedding / DeFINE-style)"
    options_class: ClassVar[type[MethodOptions]] = DecoderOptions
    weights_use: ClassVar[str] = "optional"
    serving_dense: ClassVar[bool] = True

    @property
    def module_class(self) -> type[FactorizedEmbedding]:
        return NonlinearEmbedding

    def progress_total(self, options: MethodOptions) -> int | None:
        return cast(DecoderOptions, self.parse_options(options)).steps

    def build(self, spec: ModuleSpec, matrix: torch.Tensor, ctx: FitContext) -> FactorizedEmbedding:
        opts = cast(DecoderOptions, self.options_of(ctx, spec)).resolved(spec.rank, spec.embedding_dim)
        spec.options = {**spec.options, "hidden": opts.hidden}
        work_spec = ModuleSpec.from_dict({**spec.to_dict(), "factor_dtype": "float32"})
        work = NonlinearEmbedding.from_spec(work_spec, torch.float32, device=matrix.device)
        init = balanced_factors(*truncated_svd(matrix, spec.rank, "auto", ctx.seed))
        _init_decoder(work, ctx.seed)
        with torch.no_grad():
            work.codes.copy_(init.codes)
            work.basis.copy_(init.basis)
        start = time.perf_counter()
        with torch.enable_grad():
            history = fit_nonlinear(work, matrix, opts, ctx)
        logger.info(
            "nonlinear fit: loss %.4f -> %.4f in %d steps (%.1fs)",
            history[0],
            min(history),
            opts.steps,
            time.perf_counter() - start,
        )
        module = NonlinearEmbedding.from_spec(spec, compute_dtype=matrix.dtype, device=matrix.device)
        with torch.no_grad():
            for name, value in work.named_parameters():
                if name in ("codes", "basis"):
                    module.set_factor(name, value)
                else:
                    getattr(module, name).copy_(value)
        return module
