"""GroupReduce-style factorization: frequency buckets of tokens, each with its own rank (or dense).

Tokens are sorted by frequency (most frequent first) and cut into buckets (``buckets`` option,
e.g. ``[4000, "rest"]``). Bucket ``b`` stores either its rows densely (``rows_b``) or a
frequency-weighted SVD of its rows (``codes_b`` ``n_b x r_b`` and ``basis_b`` ``r_b x H``). One
``int32`` tensor ``perm`` (length ``V``) lists the token ids in bucket order, so the storage is
``perm`` plus the per-bucket factors, all in one module. The resolved structure is written to the
spec's options (``bucket_sizes``, ``bucket_ranks``) so loading rebuilds the same module.

Ranks are chosen to meet the budget of the plain rank ``r`` (``r * (V + H)`` parameters): a
greedy allocation on the per-bucket weighted spectra (largest kept weighted energy per stored
parameter first), also trying each bucket dense, keeping the allocation that keeps most weighted
energy. ``bucket_ranks`` fixes the ranks instead (``"dense"`` for a dense bucket).

The LM head computes ``(h @ basis_b.T) @ codes_b.T`` per bucket and scatters the bucket logits
back to token order; no ``V x H`` matrix is materialised for linear buckets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ..allocation import RankBucket, greedy_ranks, kept_energy
from ..config import ModuleSpec
from ..errors import BudgetError, EmbcompressError
from ..modules import FactorizedEmbedding
from ..sizes import DENSE, module_bytes
from ..spectral import weighted_singular_values
from .base import FactorizationMethod, FitContext, MethodOptions
from .svd import check_solver
from .weighted_svd import require_weights, weighted_subspace

logger = logging.getLogger(__name__)

REST = "rest"


def _items(value: Any) -> list[Any]:
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def split_buckets(buckets: Any) -> tuple[list[int], bool]:
    """The fixed bucket sizes of ``buckets`` and whether a last ``"rest"`` bucket follows.

    Raises:
        EmbcompressError: on an empty list or a size that is not a positive integer.
    """
    items = _items(buckets)
    if not items:
        raise EmbcompressError("grouped: 'buckets' is empty; give sizes like 4000,rest")
    sizes: list[int] = []
    has_rest = str(items[-1]).lower() in (REST, "-1")
    for item in items[:-1] if has_rest else items:
        try:
            size = int(item)
        except (TypeError, ValueError):
            raise EmbcompressError(f"grouped: bucket size '{item}' is not a positive integer or 'rest'") from None
        if size <= 0:
            raise EmbcompressError(f"grouped: bucket size {size} must be positive")
        sizes.append(size)
    return sizes, has_rest


def parse_buckets(buckets: Any, rows: int) -> list[int]:
    """Bucket sizes from a list (or comma string) of positive ints, the last possibly ``"rest"``; none
    given: the most frequent eighth of the vocabulary, then the rest.

    Raises:
        EmbcompressError: when the buckets do not cover exactly ``rows`` tokens.
    """
    buckets = buckets or [max(1, rows // 8), REST]
    sizes, has_rest = split_buckets(buckets)
    total = sum(sizes)
    if (has_rest and total >= rows) or (not has_rest and total != rows):
        text = ",".join(map(str, _items(buckets)))
        fix = f"make them sum to {rows} or end with 'rest'" if not has_rest else f"keep the sizes below {rows}"
        raise EmbcompressError(f"grouped: buckets {text} cover {total} of the {rows} vocabulary rows; {fix}")
    if has_rest:
        sizes.append(rows - total)
    return sizes


def _bucket_rank(item: Any) -> int | str:
    if str(item).lower() == DENSE:
        return DENSE
    try:
        return int(item)
    except (TypeError, ValueError):
        raise EmbcompressError(f"grouped: bucket rank '{item}' is not a positive integer or 'dense'") from None


def parse_bucket_ranks(ranks: Any, sizes: list[int], cols: int) -> list[int | str]:
    """Explicit per-bucket ranks (ints or ``"dense"``), one per bucket."""
    items = _items(ranks)
    if len(items) != len(sizes):
        raise EmbcompressError(f"grouped: {len(items)} bucket_ranks for {len(sizes)} buckets")
    out: list[int | str] = []
    for item, size in zip(items, sizes, strict=True):
        rank = _bucket_rank(item)
        if rank != DENSE and not 1 <= int(rank) <= min(size, cols):
            raise EmbcompressError(f"grouped: bucket rank {rank} must be between 1 and {min(size, cols)}")
        out.append(rank)
    return out


@dataclass
class GroupedOptions(MethodOptions):
    """Options of ``grouped`` (the structure it resolves is added to the spec as ``bucket_sizes`` /
    ``bucket_ranks``).

    Attributes:
        buckets: Bucket sizes by frequency, most frequent first, the last possibly ``"rest"``
            (list or comma string; ``None``: the most frequent eighth of the vocabulary, then the rest).
        bucket_ranks: Rank per bucket (or ``"dense"``); ``None``: allocated within the rank budget.
        solver: Truncated-SVD solver inside each bucket (as for ``svd``).
    """

    label: ClassVar[str] = "grouped"

    buckets: list[Any] | str | None = None
    bucket_ranks: list[Any] | str | None = None
    solver: str = "auto"

    def validate(self) -> None:
        check_solver(self.solver)
        if self.buckets is not None:
            split_buckets(self.buckets)
        if self.bucket_ranks is not None:
            ranks = [_bucket_rank(item) for item in _items(self.bucket_ranks)]
            bad = [r for r in ranks if r != DENSE and int(r) < 1]
            if bad:
                raise EmbcompressError(f"grouped: bucket rank {bad[0]} must be at least 1")
            if self.buckets is not None and len(ranks) != len(_items(self.buckets)):
                raise EmbcompressError(f"grouped: {len(ranks)} bucket_ranks for {len(_items(self.buckets))} buckets")


def bucket_params(size: int, rank: int | str, cols: int) -> int:
    """Parameters one bucket stores."""
    return size * cols if rank == DENSE else int(rank) * (size + cols)


def _greedy(
    spectra: list[torch.Tensor], sizes: list[int], cols: int, budget: int, dense: set[int]
) -> tuple[list[int | str], float] | None:
    """Allocate ranks (at least 1 per linear bucket) maximising kept energy within ``budget`` params."""
    linear = [b for b in range(len(sizes)) if b not in dense]
    used = sum(sizes[b] * cols for b in dense) + sum(sizes[b] + cols for b in linear)
    if used > budget:
        return None
    buckets = [RankBucket(spectra[b], (sizes[b] + cols,), len(spectra[b])) for b in linear]
    grown, _ = greedy_ranks(buckets, [budget], [used])
    ranks: list[int | str] = [DENSE] * len(sizes)
    for b, rank in zip(linear, grown, strict=True):
        ranks[b] = rank
    kept = sum(kept_energy(spectra[b], len(spectra[b]) if b in dense else int(ranks[b])) for b in range(len(sizes)))
    return ranks, kept


def allocate_ranks(spectra: list[torch.Tensor], sizes: list[int], cols: int, budget: int) -> list[int | str]:
    """Best of the greedy allocations with no dense bucket or one dense bucket; linear buckets
    whose factors would outgrow their dense rows become dense."""
    results = [_greedy(spectra, sizes, cols, budget, dense) for dense in [set(), *({b} for b in range(len(sizes)))]]
    best = max((r for r in results if r is not None), key=lambda r: r[1], default=None)
    if best is None:
        need = sum(size + cols for size in sizes)
        raise BudgetError(f"grouped: the budget of {budget} parameters is below {need}, rank 1 in every bucket")
    return [
        DENSE if r != DENSE and bucket_params(n, r, cols) >= n * cols else r
        for n, r in zip(sizes, best[0], strict=True)
    ]


class GroupedEmbedding(FactorizedEmbedding):
    """Per-bucket factors (or dense rows) plus the token permutation, in one module."""

    def __init__(self, spec: ModuleSpec, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(spec, compute_dtype)
        self.sizes: list[int] = [int(n) for n in spec.options["bucket_sizes"]]
        self.ranks: list[int | str] = list(spec.options["bucket_ranks"])
        perm = torch.zeros(spec.num_embeddings, dtype=torch.int32)
        self.register_parameter("perm", nn.Parameter(perm, requires_grad=False))

    @staticmethod
    def factor_shapes(spec: ModuleSpec) -> dict[str, tuple[int, int]]:
        """``rows_b`` of a dense bucket ``b``, ``codes_b`` and ``basis_b`` of a linear one."""
        shapes: dict[str, tuple[int, int]] = {}
        for b, (size, rank) in enumerate(zip(spec.options["bucket_sizes"], spec.options["bucket_ranks"], strict=True)):
            if rank == DENSE:
                shapes[f"rows_{b}"] = (int(size), spec.embedding_dim)
            else:
                shapes[f"codes_{b}"] = (int(size), int(rank))
                shapes[f"basis_{b}"] = (int(rank), spec.embedding_dim)
        return shapes

    def _bucket_rows(self, b: int, local: torch.Tensor) -> torch.Tensor:
        if self.ranks[b] == DENSE:
            return self._factor_rows(f"rows_{b}", local)
        return self._factor_rows(f"codes_{b}", local) @ self.factor(f"basis_{b}")

    def inverse_perm(self) -> torch.Tensor:
        """Position of each token id in bucket order, computed from ``perm`` on every call (one ``O(V)``
        scatter): no cache keyed on storage, so traced/exported graphs compute it from the stored ``perm``."""
        perm = self.perm.long()
        positions = torch.arange(perm.numel(), device=perm.device)
        return torch.zeros_like(perm).scatter(0, perm, positions)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Every bucket is looked up for every id (indices clamped into the bucket) and the right one
        selected with ``where``: no data-dependent shapes or branches, so a bucket the example input of a
        trace never hits stays in the graph."""
        pos = self.inverse_perm()[ids.reshape(-1)]
        out = torch.zeros(pos.numel(), self.embedding_dim, dtype=self.compute_dtype, device=pos.device)
        start = 0
        for b, size in enumerate(self.sizes):
            local = (pos - start).clamp(0, size - 1)
            inside = ((pos >= start) & (pos < start + size)).unsqueeze(-1)
            out = torch.where(inside, self._bucket_rows(b, local), out)
            start += size
        return out.reshape(*ids.shape, self.embedding_dim)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-bucket logits through the factors, gathered back to token order (no ``V x H``
        matrix for linear buckets)."""
        h = hidden.to(self.compute_dtype)
        parts = []
        for b, rank in enumerate(self.ranks):
            if rank == DENSE:
                parts.append(self.codes_product(h, f"rows_{b}"))
            else:
                parts.append(self.codes_product(h @ self.factor(f"basis_{b}").T, f"codes_{b}"))
        return torch.cat(parts, dim=-1).index_select(-1, self.inverse_perm())

    def extra_repr(self) -> str:
        buckets = ", ".join(f"{n}@{r}" for n, r in zip(self.sizes, self.ranks, strict=True))
        return f"{super().extra_repr()}, buckets=[{buckets}]"


class GroupedMethod(FactorizationMethod):
    """Frequency buckets with their own ranks; weighted SVD inside each bucket."""

    name: ClassVar[str] = "grouped"
    description: ClassVar[str] = "GroupReduce: frequency buckets, each dense or with its own weighted-SVD rank"
    options_class: ClassVar[type[MethodOptions]] = GroupedOptions
    weights_use: ClassVar[str] = "required"
    weighted_energy: ClassVar[bool] = True

    @property
    def module_class(self) -> type[FactorizedEmbedding]:
        return GroupedEmbedding

    def check_spec(self, spec: ModuleSpec) -> None:
        opts = cast(GroupedOptions, self.parse_options(spec.options))
        rows, cols = spec.num_embeddings, spec.embedding_dim
        sizes = parse_buckets(opts.buckets, rows)
        need, budget = sum(size + cols for size in sizes), spec.rank * (rows + cols)
        if budget < need:
            nearest = -(-need // (rows + cols))
            raise BudgetError(
                f"grouped: rank {spec.rank} is too small for {len(sizes)} buckets (rank 1 in each needs the budget "
                f"of rank {nearest}); the nearest feasible value is --rank {nearest}"
            )
        if opts.bucket_ranks is not None:
            ranks = parse_bucket_ranks(opts.bucket_ranks, sizes, cols)
            used = sum(bucket_params(n, r, cols) for n, r in zip(sizes, ranks, strict=True))
            if used > budget:
                raise BudgetError(
                    f"grouped: bucket_ranks store {used} parameters, above the rank-{spec.rank} budget of {budget}"
                )

    def stored_bytes(self, spec: ModuleSpec) -> int:
        """Estimate from the budget (actual ranks are chosen at fit time, never above it) plus ``perm``."""
        return module_bytes(FactorizedEmbedding.from_spec(spec, device="meta"))[1] + 4 * spec.num_embeddings

    def build(self, spec: ModuleSpec, matrix: torch.Tensor, ctx: FitContext) -> FactorizedEmbedding:
        rows, cols = matrix.shape
        opts = cast(GroupedOptions, self.options_of(ctx, spec))
        weights = require_weights(ctx, self.name, rows)
        m = matrix.detach().float()
        perm = torch.sort(weights.cpu(), descending=True, stable=True).indices.to(m.device)
        sizes = parse_buckets(opts.buckets, rows)
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        groups = [perm[bounds[b] : bounds[b + 1]] for b in range(len(sizes))]
        if opts.bucket_ranks is not None:
            ranks = parse_bucket_ranks(opts.bucket_ranks, sizes, cols)
        else:
            spectra = [weighted_singular_values(m[g], weights[g])[: min(len(g), cols)] for g in groups]
            ranks = allocate_ranks(spectra, sizes, cols, spec.rank * (rows + cols))
        logger.info("grouped buckets (size@rank): %s", ", ".join(f"{n}@{r}" for n, r in zip(sizes, ranks, strict=True)))
        spec.options = {**spec.options, "bucket_sizes": sizes, "bucket_ranks": ranks}
        module = GroupedEmbedding.from_spec(spec, compute_dtype=matrix.dtype, device=matrix.device)
        with torch.no_grad():
            module.perm.data = perm.to(torch.int32)
            for b, (group, rank) in enumerate(zip(groups, ranks, strict=True)):
                if rank == DENSE:
                    module.set_factor(f"rows_{b}", m[group])
                    continue
                factors = weighted_subspace(m[group], weights[group], int(rank), opts.solver, ctx.seed)
                module.set_factor(f"codes_{b}", factors.codes)
                module.set_factor(f"basis_{b}", factors.basis)
        return module
