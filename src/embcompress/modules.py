"""Factorized replacements for a token embedding and an LM head.

A factorized embedding represents ``E (V x H) ~= codes (V x r) @ basis (r x H) - offset``.
The lookup gathers ``r``-dimensional codes and projects them; the LM head computes
``(h @ basis.T) @ codes.T`` and never materialises the dense ``V x H`` matrix.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModuleSpec
from .quant import dequantize_rows, dtype_from_name, int8_matmul_t, quantize_rows


class CompressedEmbedding(nn.Module, abc.ABC):
    """What every compressed embedding module offers: an ``nn.Embedding``-compatible lookup, the
    LM-head product without a dense ``V x H`` matrix, rows of the approximated matrix, and a copy with
    another factor storage. Surgery, checkpoints, distillation and reports only rely on this surface.

    Subclasses keep ``spec`` (:class:`ModuleSpec`) and ``compute_dtype``, build empty from
    :meth:`from_spec` (loading) and implement the abstract methods.
    """

    spec: ModuleSpec
    compute_dtype: torch.dtype
    #: Multiplier of the distillation learning rate for this module's factors (``--lr`` is the peak rate of
    #: plain factors; a module whose float parts are scales of coded values needs smaller steps).
    lr_scale: ClassVar[float] = 1.0

    @classmethod
    def from_spec(
        cls,
        spec: ModuleSpec,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> CompressedEmbedding:
        """Build an uninitialised module (used when loading a checkpoint)."""
        with torch.device(device or "cpu"):
            return cls(spec, compute_dtype)  # type: ignore[call-arg]

    @property
    def num_embeddings(self) -> int:
        return self.spec.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def rank(self) -> int:
        return self.spec.rank

    @abc.abstractmethod
    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the approximated matrix (without ``embed_scale``), differentiable in the factors."""

    @abc.abstractmethod
    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute ``hidden @ E.T`` (the LM-head product)."""

    @abc.abstractmethod
    def factor_names(self) -> list[str]:
        """Names of the trainable/storable factor tensors."""

    @abc.abstractmethod
    def with_factor_dtype(self, factor_dtype: str) -> CompressedEmbedding:
        """A copy storing the factors as ``factor_dtype``; ``self`` is untouched."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.rows(input_ids)
        return out * self.spec.embed_scale if self.spec.embed_scale is not None else out

    def dense_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the approximated matrix (without ``embed_scale``)."""
        device = next(self.parameters()).device
        return self.rows(torch.arange(start, stop, device=device))

    def dense(self) -> torch.Tensor:
        """Materialise the approximated ``V x H`` matrix (without ``embed_scale``)."""
        return self.dense_rows(0, self.num_embeddings)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, method={self.spec.method}, "
            f"factor_dtype={self.spec.factor_dtype}"
        )


class FactorizedEmbedding(CompressedEmbedding):
    """Drop-in for ``nn.Embedding`` storing low-rank factors instead of the dense matrix."""

    def __init__(self, spec: ModuleSpec, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype
        self.padding_idx = spec.padding_idx
        self.embed_scale = spec.embed_scale
        store = dtype_from_name(spec.factor_dtype)
        is_int = store == torch.int8
        for name, shape in self.factor_shapes(spec).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=store), requires_grad=not is_int))
            if is_int:
                self.register_parameter(f"{name}_scale", nn.Parameter(torch.ones(shape[0], 1)))
        self.offset = nn.Parameter(torch.zeros(spec.embedding_dim)) if spec.offset else None

    @staticmethod
    def factor_shapes(spec: ModuleSpec) -> dict[str, tuple[int, int]]:
        """Name and shape of each factor tensor the module of ``spec`` stores."""
        return {"codes": (spec.num_embeddings, spec.rank), "basis": (spec.rank, spec.embedding_dim)}

    @classmethod
    def from_factors(
        cls,
        spec: ModuleSpec,
        codes: torch.Tensor,
        basis: torch.Tensor,
        offset: torch.Tensor | None = None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> FactorizedEmbedding:
        """Build a module holding fitted factors, stored in ``spec.factor_dtype``."""
        module = cls.from_spec(spec, compute_dtype, device=codes.device)
        with torch.no_grad():
            module.set_factor("codes", codes)
            module.set_factor("basis", basis)
            if module.offset is not None and offset is not None:
                module.offset.copy_(offset.to(module.offset))
        return module

    # -- factor access -------------------------------------------------------------------------
    def set_factor(self, name: str, value: torch.Tensor) -> None:
        """Store ``value`` into factor ``name``, quantizing it when the storage is int8."""
        param = getattr(self, name)
        if param.dtype == torch.int8:
            q, scale = quantize_rows(value)
            param.data = q.to(param.device)
            getattr(self, f"{name}_scale").data = scale.to(param.device)
        else:
            param.data = value.detach().to(device=param.device, dtype=param.dtype).contiguous()

    def factor(self, name: str) -> torch.Tensor:
        """Return factor ``name`` in the compute dtype (de-quantized if stored as int8)."""
        param = getattr(self, name)
        if param.dtype == torch.int8:
            return dequantize_rows(param, getattr(self, f"{name}_scale"), self.compute_dtype)
        return param.to(self.compute_dtype)

    def factor_names(self) -> list[str]:
        """Names of the factor tensors (stored as ``spec.factor_dtype``; int8 ones carry ``<name>_scale``)."""
        return list(self.factor_shapes(self.spec))

    def with_factor_dtype(self, factor_dtype: str) -> FactorizedEmbedding:
        """A copy storing the factors as ``factor_dtype`` (int8: per-row scales); ``self`` is untouched.

        Used to quantize factors after distillation (int8 factors cannot be trained).
        """
        spec = dataclasses.replace(self.spec, factor_dtype=factor_dtype, options=copy.deepcopy(self.spec.options))
        device = next(self.parameters()).device
        new = type(self).from_spec(spec, self.compute_dtype, device=device)
        factors = set(self.factor_names())
        scales = {f"{name}_scale" for name in factors}
        with torch.no_grad():
            for name in factors:
                new.set_factor(name, self.factor(name).float())
            for name, param in self.named_parameters():
                if name not in factors and name not in scales:
                    new.get_parameter(name).data = param.detach().clone()
        return new

    def _factor_rows(self, name: str, ids: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
        """Rows ``ids`` of factor ``name`` in the compute dtype (de-quantized if stored as int8)."""
        param = getattr(self, name)
        if param.dtype == torch.int8:
            return dequantize_rows(param[ids], getattr(self, f"{name}_scale")[ids], self.compute_dtype)
        return F.embedding(ids, param, padding_idx).to(self.compute_dtype)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Compute ``hidden @ E.T`` through the factors (the LM-head product)."""
        h = hidden.to(self.compute_dtype)
        logits = self.codes_product(h @ self.factor("basis").T, "codes")
        if self.offset is not None:
            logits = logits - (h @ self.offset.to(h.dtype)).unsqueeze(-1)
        return logits

    def codes_product(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``x @ factor(name).T``; an int8 factor goes through :func:`int8_matmul_t` (no de-quantized copy)."""
        param = getattr(self, name)
        if param.dtype == torch.int8:
            return int8_matmul_t(x, param, getattr(self, f"{name}_scale"))
        return x @ param.to(x.dtype).T

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the approximated matrix (without ``embed_scale``), differentiable in the factors."""
        out = self._factor_rows("codes", ids, self.padding_idx) @ self.factor("basis")
        return out - self.offset.to(out.dtype) if self.offset is not None else out


class FactorizedLinear(nn.Module):
    """Drop-in for an LM head ``nn.Linear(H, V)``: ``logits = source.project(h) + bias``.

    ``source`` is the input embedding's module when tied (factors shared, stored once) or a
    module of its own when untied.
    """

    def __init__(self, source: CompressedEmbedding, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        self.source = source
        self.bias = bias

    @classmethod
    def from_source(cls, source: CompressedEmbedding, bias: torch.Tensor | None = None) -> FactorizedLinear:
        """Wrap ``source``; an existing ``nn.Parameter`` bias is shared, a tensor is copied."""
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias.detach().clone())
        return cls(source, bias)

    @property
    def in_features(self) -> int:
        return self.source.embedding_dim

    @property
    def out_features(self) -> int:
        return self.source.num_embeddings

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.source.project(hidden)
        if self.bias is not None:
            logits = logits + self.bias.to(logits.dtype)
        return logits.to(hidden.dtype)

    def dense(self) -> torch.Tensor:
        """Materialise the approximated weight matrix ``(V x H)``."""
        return self.source.dense()
