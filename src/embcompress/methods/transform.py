"""``transform``: transform coding of the whole matrix, robust to the text it will serve.

Every row keeps all of its information at a lower precision instead of a frequency-ranked subset of
rows keeping everything: the matrix is centred, rotated onto the principal axes of the error that
matters (for an LM head, the second moment ``E[h h^T]`` of the hidden states the head sees, which
:mod:`embcompress.selftext` estimates on text the model writes itself), and each band of components
gets the integer bits reverse water-filling gives it, quantized with a Lloyd-Max codebook over values
normalised by a per-component and a per-row scale (:mod:`embcompress.codec`).

Budgets are bytes: ``--ratio R`` stores at most ``dense fp32 bytes / R`` (``R = 8`` is per-row int4's
size, 4 bits per weight), or ``-O bits_per_weight=B``. The stored tensors are the packed codes
(``uint8``), the codebooks, the two scale vectors, the rotation and the mean; nothing is derived from
token frequencies, so no row is starved on text unlike the text the budget was planned on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..codec import (
    HeadRows,
    TransformCode,
    encode,
    grid_levels,
    head_nbytes,
    head_rows_for,
    packed_nbytes,
    quantize_head,
    unpack_bits,
    unpack_bits_bytewise,
)
from ..config import ModuleSpec
from ..errors import BudgetError, EmbcompressError
from ..modules import CompressedEmbedding
from ..quant import INT8_MM_ALIGN, dtype_from_name, int8_matmul_t, use_fast_kernel
from .base import FactorizationMethod, FitContext, MethodOptions

logger = logging.getLogger(__name__)

#: Rows decoded at a time by the LM-head product (bounds its temporary memory).
HEAD_CHUNK = 8192
#: Rows unpacked at a time into the int8 serving table (its int64 temporaries are 8 bytes per value).
TABLE_CHUNK = 1024
FLOAT_NAMES = ("mean", "basis", "comp_scale", "row_scale")
_FLOAT_ONLY = (
    "transform stores float scales and codebooks: factor dtype '{}' is not allowed; use float16, bfloat16 or float32"
)


@dataclass
class TransformOptions(MethodOptions):
    """Options of ``transform``.

    Attributes:
        bits_per_weight: Budget in bits per matrix entry, everything stored included (overrides ``--ratio``).
        max_bits: Largest bit width of a band of components.
        iters: Alternations of codebook and row-scale refits.
        head_rows: Most important rows (``FitContext.priority``) stored whole at int8: ``-1`` sizes them
            from the budget (:func:`embcompress.codec.head_rows_for`), ``0`` stores none.
    """

    label: ClassVar[str] = "transform"

    bits_per_weight: float = 0.0
    max_bits: int = 8
    iters: int = 2
    head_rows: int = -1

    def validate(self) -> None:
        if not (self.bits_per_weight == 0 or 0.5 <= self.bits_per_weight <= 16):
            raise EmbcompressError(f"transform option bits_per_weight must be in [0.5, 16], got {self.bits_per_weight}")
        if not 1 <= self.max_bits <= 8:
            raise EmbcompressError(f"transform option max_bits must be between 1 and 8, got {self.max_bits}")
        if self.iters < 1:
            raise EmbcompressError(f"transform option iters must be at least 1, got {self.iters}")
        if self.head_rows < -1:
            raise EmbcompressError(f"transform option head_rows must be -1 (auto), 0 or more, got {self.head_rows}")


def _tracing() -> bool:
    """Traced for a graph (TorchScript or ONNX export): take the graph-friendly code paths."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def groups_of(spec: ModuleSpec) -> list[tuple[int, int]]:
    """``(components, bits)`` of each band group, as recorded in the spec by the fit."""
    if "groups" not in spec.options:
        raise EmbcompressError(f"transform spec of '{spec.path}' has no 'groups'; it was never fitted")
    return [(int(n), int(b)) for n, b in spec.options["groups"]]


def head_rows_of(spec: ModuleSpec) -> int:
    """Rows stored whole, as recorded in the spec by the fit (0 in checkpoints written before head rows)."""
    return int(spec.options.get("head_rows", 0) or 0)


class TransformCodedEmbedding(CompressedEmbedding):
    """The most important rows stored whole at int8 (``head_values * head_scale``), every other row
    transform-coded: ``E[v] = row_scale[v] * (u[v] * comp_scale) @ basis + mean``, ``u[v]`` a codebook value
    per component.

    Head rows are the ``head_rows`` ids in ``head_ids``; the coded ("bulk") rows are the other ids in
    ascending order, so ``row_scale`` and the codes have ``V - head_rows`` rows (all ``V`` in checkpoints
    written before head rows). Integer tensors are frozen; the float tensors (stored in
    ``spec.factor_dtype``, float16 by default) can be distilled, at a tenth of the plain factors' learning
    rate.
    """

    #: SmolLM2 16x, 12 distillation steps: held-out KL 0.80 -> 0.50 at lr 3e-4, 0.57 at 1e-3, 1.57 at the
    #: generic 3e-3 (which first jumps to 3.5): the scales multiply coded values, so a step moves many entries.
    lr_scale: ClassVar[float] = 0.1

    def __init__(self, spec: ModuleSpec, compute_dtype: torch.dtype = torch.float32) -> None:
        nn.Module.__init__(self)
        self.spec, self.compute_dtype, self.padding_idx = spec, compute_dtype, spec.padding_idx
        self.groups, self.head_rows = groups_of(spec), head_rows_of(spec)
        store = dtype_from_name(spec.factor_dtype)
        if not store.is_floating_point:
            raise EmbcompressError(_FLOAT_ONLY.format(spec.factor_dtype))
        cols, k = spec.embedding_dim, sum(n for n, _ in self.groups)
        rows = spec.num_embeddings - self.head_rows
        shapes = {"mean": (cols,), "basis": (k, cols), "comp_scale": (k,), "row_scale": (rows,)}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=store)))
        for g, (n, bits) in enumerate(self.groups):
            packed = torch.empty(rows, packed_nbytes(n, bits), dtype=torch.uint8)
            self.register_parameter(f"codes_{g}", nn.Parameter(packed, requires_grad=False))
            self.register_parameter(f"codebook_{g}", nn.Parameter(torch.empty(2**bits, dtype=store)))
        if self.head_rows:
            n = self.head_rows
            self.head_ids = nn.Parameter(torch.empty(n, dtype=torch.int32), requires_grad=False)
            self.head_values = nn.Parameter(torch.empty(n, cols, dtype=torch.int8), requires_grad=False)
            self.head_scale = nn.Parameter(torch.empty(n, dtype=store))

    @classmethod
    def from_code(
        cls,
        spec: ModuleSpec,
        code: TransformCode,
        compute_dtype: torch.dtype = torch.float32,
        head: HeadRows | None = None,
    ) -> TransformCodedEmbedding:
        """A module holding ``code`` for the bulk rows and ``head`` for the head rows (``spec.options`` must
        record their layout: ``groups`` and ``head_rows``)."""
        module = cls.from_spec(spec, compute_dtype, device=code.mean.device)
        tensors = {name: getattr(code, name) for name in FLOAT_NAMES}
        for g, (packed, book) in enumerate(zip(code.codes, code.codebooks, strict=True)):
            tensors[f"codes_{g}"], tensors[f"codebook_{g}"] = packed, book
        if head is not None:
            tensors.update(head_ids=head.ids, head_values=head.values, head_scale=head.scale)
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(module, name).copy_(value)
        return module  # type: ignore[return-value]

    @property
    def bulk_rows(self) -> int:
        """Rows of the transform code (the vocabulary minus the head rows)."""
        return self.num_embeddings - self.head_rows

    def factor_names(self) -> list[str]:
        head = ["head_scale"] if self.head_rows else []
        return [*FLOAT_NAMES, *(f"codebook_{g}" for g in range(len(self.groups))), *head]

    def with_factor_dtype(self, factor_dtype: str) -> TransformCodedEmbedding:
        spec = dataclasses.replace(self.spec, factor_dtype=factor_dtype, options=dict(self.spec.options))
        new = type(self).from_spec(spec, self.compute_dtype, device=self.mean.device)
        with torch.no_grad():
            for name, param in self.named_parameters():
                new.get_parameter(name).copy_(param)
        return new  # type: ignore[return-value]

    def slots(self) -> torch.Tensor:
        """``(V,)`` int64: where each token id lives in ``[head rows..., bulk rows...]``. Derived from
        ``head_ids`` (not stored) and cached; rebuilt as graph operations when traced for export."""
        tracing = _tracing()
        key = (self.head_ids.data_ptr(), self.head_ids._version)
        cached = getattr(self, "_slots", None)
        if tracing or cached is None or cached[0] != key:
            ids, n = self.head_ids.long(), self.head_rows
            head = torch.zeros(self.num_embeddings, dtype=torch.int64, device=ids.device)
            head = head.scatter(0, ids, torch.ones_like(ids))
            position = head.scatter(0, ids, torch.arange(n, device=ids.device))
            slots = torch.where(head > 0, position, torch.cumsum(1 - head, 0) - 1 + n)
            if tracing:
                return slots
            self._slots = (key, slots)
        return self._slots[1]

    def _books(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each group's codebook on its int8 grid (straight-through) and grid step, in the compute dtype."""
        books = [self.get_parameter(f"codebook_{g}") for g in range(len(self.groups))]
        return [grid_levels(book.to(self.compute_dtype)) for book in books]

    def _levels(self, ids: torch.Tensor, books: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Codebook values ``u`` of bulk rows ``ids`` (flat), ``(len(ids), K)`` in the compute dtype."""
        # Traced graphs unpack in int32 windows: other runtimes (onnxruntime) sum int64 through doubles.
        unpack = unpack_bits_bytewise if _tracing() else unpack_bits
        parts = []
        for g, ((n, bits), (book, _)) in enumerate(zip(self.groups, books or self._books(), strict=True)):
            parts.append(book[unpack(self.get_parameter(f"codes_{g}")[ids], bits, n)])
        return torch.cat(parts, -1)

    def int8_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T, step)``: every coded value as an int8 grid index (``V' x K`` padded for the kernel, ``V'`` the
        bulk rows) and the grid step of each component, so that ``u = T[:, :K] * step``. Built once from the
        codes and cached until a code or codebook changes (it is not stored: the file keeps the packed codes)."""
        params = [self.get_parameter(f"{kind}_{g}") for g in range(len(self.groups)) for kind in ("codes", "codebook")]
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                self._table = (key, *self._build_int8_table())
        return self._table[1], self._table[2]

    def _build_int8_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill one zero-padded int8 table through each group's ``2**bits``-entry int8 lookup table, a few
        rows at a time: building through float levels and concatenated chunks left MiniLM's serving
        process 70 MiB larger (freed temporaries the allocator keeps)."""
        books = self._books()
        steps = torch.cat([step.expand(n) for (n, _), (_, step) in zip(self.groups, books, strict=True)])
        width = steps.shape[0] + (-steps.shape[0]) % INT8_MM_ALIGN
        table = torch.zeros(self.bulk_rows, width, dtype=torch.int8, device=self.mean.device)
        start = 0
        for g, ((n, bits), (book, step)) in enumerate(zip(self.groups, books, strict=True)):
            lut, codes = torch.round(book / step).to(torch.int8), self.get_parameter(f"codes_{g}")
            for rows in range(0, self.bulk_rows, TABLE_CHUNK):
                block = slice(rows, rows + TABLE_CHUNK)
                table[block, start : start + n] = lut[unpack_bits(codes[block], bits, n)]
            start += n
        return table, steps

    def _bulk_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Decoded bulk rows ``flat`` (indices into the bulk), ``(len(flat), H)``."""
        dt = self.compute_dtype
        if use_fast_kernel(self.comp_scale):  # inference: gather int8 grid indices, no bit unpacking
            table, steps = self.int8_table()
            levels = table[flat, : steps.shape[0]].to(dt) * steps
        else:
            levels = self._levels(flat)
        z = levels * self.comp_scale.to(dt) * self.row_scale.to(dt)[flat, None]
        return z @ self.basis.to(dt) + self.mean.to(dt)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if not self.head_rows:
            return self._bulk_rows(flat).reshape(*ids.shape, self.embedding_dim)
        n, dt = self.head_rows, self.compute_dtype
        slot = self.slots()[flat]
        at = slot.clamp(max=n - 1)
        head = self.head_values[at].to(dt) * self.head_scale.to(dt)[at, None]
        out = torch.where((slot < n)[:, None], head, self._bulk_rows((slot - n).clamp(min=0)))
        return out.reshape(*ids.shape, self.embedding_dim)

    def _bulk_project(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the bulk rows, ``(..., V')``."""
        dt = self.compute_dtype
        g = (h @ self.basis.to(dt).T) * self.comp_scale.to(dt)
        bias = (h @ self.mean.to(dt)).unsqueeze(-1)
        if use_fast_kernel(g):
            table, steps = self.int8_table()
            return int8_matmul_t(g * steps, table, self.row_scale) + bias
        chunks = torch.arange(self.bulk_rows, device=h.device).split(HEAD_CHUNK)
        parts = [(g @ self._levels(ids).T) * self.row_scale.to(dt)[ids] for ids in chunks]
        return torch.cat(parts, -1) + bias

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.to(self.compute_dtype)
        bulk = self._bulk_project(h)
        if not self.head_rows:
            return bulk
        # The most frequent tokens' logits in the compute dtype, never through the bf16 kernel.
        head = (h @ self.head_values.to(h.dtype).T) * self.head_scale.to(h.dtype)
        return torch.cat([head, bulk], -1).index_select(-1, self.slots())


class TransformMethod(FactorizationMethod):
    """Transform coding within a byte budget (see the module docstring)."""

    name: ClassVar[str] = "transform"
    description: ClassVar[str] = "rotation + water-filled bits + Lloyd-Max codebooks; robust to any text"
    options_class: ClassVar[type[MethodOptions]] = TransformOptions
    byte_budget: ClassVar[bool] = True
    default_factor_dtype: ClassVar[str] = "float16"

    def target_bytes(self, spec: ModuleSpec, ratio: float | None, options: MethodOptions) -> int:
        """The byte budget of ``spec``'s matrix: ``bits_per_weight`` if given, else fp32 bytes / ``ratio``."""
        assert isinstance(options, TransformOptions)
        entries = spec.num_embeddings * spec.embedding_dim
        if options.bits_per_weight:
            return int(options.bits_per_weight * entries / 8)
        if ratio is None:
            raise BudgetError("method 'transform' needs a byte budget: pass --ratio R (or -O bits_per_weight=B)")
        return int(entries * 4 / ratio)

    @property
    def module_class(self) -> type[CompressedEmbedding]:
        return TransformCodedEmbedding

    def check_spec(self, spec: ModuleSpec) -> None:
        if not dtype_from_name(spec.factor_dtype).is_floating_point:
            raise EmbcompressError(_FLOAT_ONLY.format(spec.factor_dtype))

    def build(self, spec: ModuleSpec, matrix: torch.Tensor, ctx: FitContext) -> CompressedEmbedding:
        opts = self.options_of(ctx, spec)
        assert isinstance(opts, TransformOptions)
        rows, cols = matrix.shape
        if cols % 8:
            raise EmbcompressError(f"transform needs a hidden size divisible by 8, got {cols}")
        budget = int(spec.options["target_bytes"])
        start = time.perf_counter()
        head_ids, bulk_ids = split_rows(rows, self.head_size(rows, cols, budget, opts), ctx.priority)
        x = matrix.detach().float()
        try:
            code = encode(
                x[bulk_ids.to(x.device)] if head_ids.numel() else x,
                max_bytes=budget - head_nbytes(head_ids.numel(), cols),
                metric=ctx.metric,
                max_bits=opts.max_bits,
                iters=opts.iters,
                seed=ctx.seed,
            )
        except ValueError as exc:
            raise BudgetError(f"{exc} (the {spec.role} embedding); use a lower --ratio") from None
        head = quantize_head(x, head_ids) if head_ids.numel() else None
        spec.options = {**spec.options, "groups": code.layout.tolist(), "head_rows": int(head_ids.numel())}
        spec.rank = int(code.basis.shape[0])
        logger.info(
            "transform code of %s: %d head rows at int8, %s in %.1fs",
            spec.path, head_ids.numel(), spec.options["groups"], time.perf_counter() - start,
        )  # fmt: skip
        module = TransformCodedEmbedding.from_code(spec, code, compute_dtype=matrix.dtype, head=head)
        return module.to(matrix.device)

    @staticmethod
    def head_size(rows: int, cols: int, budget: int, options: TransformOptions) -> int:
        """Head rows of a fit: as given, else sized from the budget (:func:`embcompress.codec.head_rows_for`)."""
        if options.head_rows >= 0:
            if options.head_rows >= rows:
                raise EmbcompressError(
                    f"transform option head_rows must be below the vocabulary ({rows}), got {options.head_rows}"
                )
            return options.head_rows
        return head_rows_for(rows, cols, budget)


def split_rows(rows: int, head: int, priority: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(head ids, bulk ids)``, both ascending: the first ``head`` ids of ``priority`` (the vocabulary order
    when ``None``) and the others."""
    order = torch.arange(rows) if priority is None else priority.to(torch.int64).cpu()
    if order.numel() != rows or not torch.equal(order.sort().values, torch.arange(rows)):
        raise EmbcompressError(f"the token priority must hold every id below {rows} once")
    is_head = torch.zeros(rows, dtype=torch.bool)
    is_head[order[:head]] = True
    ids = torch.arange(rows)
    return ids[is_head], ids[~is_head]
