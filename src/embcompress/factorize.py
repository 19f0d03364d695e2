"""Factorize a model's embeddings in memory: plan (validate), fit, swap, account."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .budget import Budget, budget_from, resolve_rank
from .checkpoint import check_output_dir, write_checkpoint
from .config import ROLES, CompressionConfig, ModuleSpec
from .errors import BudgetError, EmbcompressError
from .frequency import FrequencyOptions, TokenFrequencies, token_frequencies, token_priority
from .hf_integration import EmbcompressQuantizationConfig
from .methods import FactorizationMethod, FitContext, get_method
from .methods.base import MethodOptions, ProgressFn
from .modules import CompressedEmbedding, FactorizedLinear
from .options import Options
from .outputs import reserve_output
from .progress import LoggingReporter, Reporter
from .quant import dtype_from_name, fast_kernels
from .sizes import module_bytes
from .sources import LoadOptions, input_paths, load_source
from .spectral import break_even_rank
from .surgery import EmbeddingTargets, find_targets, install_modules

logger = logging.getLogger(__name__)


@dataclass
class FactorizeOptions(Options):
    """What to factorize and how; validated at construction (method, its options, dtype, budgets).

    Attributes:
        method: Registered method name (``embcompress.methods.method_names()``).
        rank: Rank for every target (overridden per target by ``rank_input`` / ``rank_output``).
        energy: Budget instead of ``rank``: smallest rank keeping this share of spectral energy.
        ratio: Budget instead of ``rank``: largest rank compressing the stored bytes at least this much.
        rank_input: Rank of the input embedding.
        rank_output: Rank of an untied output head.
        targets: Which matrices to replace: ``("input", "output")`` or one of them.
        factor_dtype: Storage dtype of the factors (``None``: the method's default, float32 for the
            factorizations, float16 for ``transform``'s scales and codebooks).
        seed: Seed for any randomness in the fit.
        method_options: The method's options as a JSON dict (recorded as given in each module
            spec); parsed into the method's typed options (:attr:`method_config`).
    """

    method: str = "svd"
    rank: int | None = None
    rank_input: int | None = None
    rank_output: int | None = None
    energy: float | None = None
    ratio: float | None = None
    targets: tuple[str, ...] = ROLES
    factor_dtype: str | None = None
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        self.targets = tuple(self.targets)
        bad = [t for t in self.targets if t not in ROLES]
        if bad or not self.targets:
            raise EmbcompressError(f"unknown target(s) {', '.join(bad) or '(none)'}; valid: input, output")
        self.require_positive("rank", "rank_input", "rank_output", optional=True)
        budget_from(self.rank, self.energy, self.ratio)
        if self.factor_dtype is not None:
            dtype_from_name(self.factor_dtype)
        method = get_method(self.method)
        method.parse_options(self.method_options)
        if method.byte_budget and {self.energy, self.rank, self.rank_input, self.rank_output} != {None}:
            raise BudgetError(f"method '{self.method}' takes a byte budget: pass --ratio R, not --rank or --energy")

    @property
    def method_config(self) -> MethodOptions:
        """The typed options of :attr:`method` parsed from :attr:`method_options`."""
        return get_method(self.method).parse_options(self.method_options)

    def budget_for(self, role: str) -> Budget | None:
        """The budget of target ``role``: its own rank if given, else the shared rank/energy/ratio."""
        specific = self.rank_input if role == "input" else self.rank_output
        if specific is not None:
            return budget_from(specific, None, None)
        return budget_from(self.rank, self.energy, self.ratio)

    def budget(self) -> dict[str, Any]:
        """The shared budget as JSON (``mode``, ``value``), or ``{}`` when only per-target ranks are given."""
        shared = budget_from(self.rank, self.energy, self.ratio)
        return shared.to_dict() if shared is not None else {}


@dataclass
class ModuleStats:
    """Size and fidelity of one replaced matrix."""

    path: str
    role: str
    shape: tuple[int, int]
    rank: int
    tied_to: str | None
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    relative_error: float | None
    weighted_relative_error: float | None = None
    serving_dense: bool = False

    @property
    def ratio(self) -> float:
        return self.bytes_before / max(self.bytes_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape), "ratio": self.ratio}


@dataclass
class CompressionResult:
    """What :func:`factorize_model` did."""

    config: CompressionConfig
    modules: list[ModuleStats]
    params_before: int
    params_after: int
    budget: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.config.method,
            "modules": [m.to_dict() for m in self.modules],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "budget": self.budget,
        }


def rank_limit(rows: int, cols: int, method: FactorizationMethod) -> int:
    """Largest admissible rank: below the break-even rank and the matrix dimensions."""
    return min(break_even_rank(rows, cols, method.params_per_rank(rows, cols)), rows, cols)


def _check_rank(rank: int, role: str, rows: int, cols: int, limit: int) -> None:
    if rank <= 0 or rank > limit:
        raise BudgetError(
            f"rank {rank} for the {role} embedding ({rows}x{cols}) must be between 1 and {limit}: "
            f"above {limit} the factors do not reduce the parameter count (break-even rank {limit})"
        )


def check_weights_use(method: FactorizationMethod, weighted: bool) -> None:
    """Refuse token frequencies a method does not use, or their absence where it needs them."""
    if method.weights_use == "required" and not weighted:
        raise EmbcompressError(f"method '{method.name}' needs token frequencies; pass --freq-data PATH")
    if method.weights_use == "none" and weighted:
        raise EmbcompressError(f"method '{method.name}' does not use token frequencies; drop --freq-data")


def _check_weights(method: FactorizationMethod, row_weights: torch.Tensor | None, rows: int) -> None:
    check_weights_use(method, row_weights is not None)
    if row_weights is not None and row_weights.numel() != rows:
        raise EmbcompressError(f"row weights have {row_weights.numel()} entries but the vocabulary has {rows} rows")


def _validate_targets(targets: tuple[str, ...], found: EmbeddingTargets) -> tuple[str, ...]:
    if targets == ("output",) and found.output_module is None:
        raise EmbcompressError("target 'output' requested but the model has no output embedding (LM head)")
    return tuple(t for t in targets if t == "input" or found.output_module is not None)


def plan(
    model: nn.Module, options: FactorizeOptions, row_weights: torch.Tensor | None = None
) -> tuple[CompressionConfig, EmbeddingTargets]:
    """Check ``options`` against ``model`` (the options validated themselves at construction), resolve
    budgets to ranks and return the specs to build.

    Touches nothing; energy budgets compute the (possibly row-weighted) spectrum of the matrix.
    """
    method = get_method(options.method)
    found = find_targets(model)
    targets = _validate_targets(tuple(options.targets), found)
    rows, cols = found.vocab_size, found.hidden_size
    _check_weights(method, row_weights, rows)
    specs: list[ModuleSpec] = []
    for role in [r for r in ROLES if r in targets]:
        if role == "output" and found.tied and "input" in targets:
            specs.append(_spec(found, role, options, specs[0].rank, method, tied_to=found.input_path))
            continue
        spec = _spec(found, role, options, 1, method)
        if method.byte_budget:
            spec.options["target_bytes"] = method.target_bytes(spec, options.ratio, options.method_config)
        else:
            budget = options.budget_for(role)
            if budget is None:
                raise BudgetError(
                    f"no rank given for the {role} embedding; pass --rank, --energy or --ratio (or --rank-{role})"
                )
            weight = (found.input_module if role == "input" else found.output_module).weight.detach()
            limit = rank_limit(rows, cols, method)
            spec.rank = resolve_rank(budget, spec, weight, method, limit, row_weights)
            _check_rank(spec.rank, role, rows, cols, limit)
        method.check_spec(spec)
        specs.append(spec)
    config = CompressionConfig(modules=specs, method=options.method, seed=options.seed)
    return config, found


def _spec(
    found: EmbeddingTargets,
    role: str,
    options: FactorizeOptions,
    rank: int,
    method: FactorizationMethod,
    tied_to: str | None = None,
) -> ModuleSpec:
    is_input = role == "input"
    module = found.input_module if is_input else found.output_module
    return ModuleSpec(
        path=found.input_path if is_input else found.output_path,
        role=role,
        method=options.method,
        rank=rank,
        num_embeddings=found.vocab_size,
        embedding_dim=found.hidden_size,
        factor_dtype=options.factor_dtype or method.default_factor_dtype,
        tied_to=tied_to,
        aliases=list(found.input_aliases) if is_input else [],
        padding_idx=module.padding_idx if is_input else None,
        bias=(not is_input) and getattr(module, "bias", None) is not None,
        offset=method.uses_offset,
        embed_scale=_embed_scale(module) if is_input else None,
        options=dict(options.method_options),
    )


def _embed_scale(module: nn.Module) -> float | None:
    scale = getattr(module, "embed_scale", None)
    return None if scale is None else float(scale)


def relative_error(
    original: torch.Tensor, module: CompressedEmbedding, row_weights: torch.Tensor | None = None, chunk: int = 8192
) -> float:
    """``||W^1/2 (E - E_hat)||_F / ||W^1/2 E||_F`` in row chunks (no full dense copy); ``W`` defaults to 1.
    Rows come from the reference decoder: the int8 serving table would be built and kept (a quarter of a
    dense matrix for a transform code) while the next matrix is fitted."""
    err = ref = 0.0
    with torch.no_grad(), fast_kernels(False):
        for start in range(0, original.shape[0], chunk):
            rows = original[start : start + chunk].float()
            diff2 = (rows - module.dense_rows(start, start + rows.shape[0]).float()).pow(2).sum(1)
            ref2 = rows.pow(2).sum(1)
            if row_weights is not None:
                w = row_weights[start : start + rows.shape[0]].float()
                diff2, ref2 = diff2 * w, ref2 * w
            err += float(diff2.sum())
            ref += float(ref2.sum())
    return math.sqrt(err / max(ref, 1e-30))


def factorize_model(
    model: nn.Module,
    options: FactorizeOptions,
    row_weights: torch.Tensor | None = None,
    progress: Any = None,
    metric: torch.Tensor | None = None,
    priority: torch.Tensor | None = None,
) -> CompressionResult:
    """Replace the embeddings of ``model`` in place with fitted factorized modules.

    Everything is validated before the model is touched. ``metric`` (``H x H``, PSD) weighs the
    reconstruction error of methods that use one (``transform``), e.g. ``E[h h^T]`` of the hidden
    states an LM head sees; ``priority`` (token ids, most important first) picks the rows such methods
    store whole. Returns the config to save and per-module size/fidelity statistics.
    """
    config, found = plan(model, options, row_weights)
    params_before = sum(p.numel() for p in model.parameters())
    method = get_method(options.method)
    ctx = FitContext(options.seed, row_weights, options.method_config, progress, metric, priority)
    modules: dict[str, nn.Module] = {}
    stats: list[ModuleStats] = []
    for spec in config.modules:
        dense = found.input_module if spec.role == "input" else found.output_module
        weight = dense.weight.detach()
        if spec.tied_to is not None:
            source = modules[spec.tied_to]
            spec.rank = config.module(spec.tied_to).rank
        else:
            logger.info("fitting %s (%dx%d) at rank %d with %s", spec.path, *weight.shape, spec.rank, spec.method)
            source = method.build(spec, weight, ctx)
        bias = getattr(dense, "bias", None) if spec.role == "output" else None
        modules[spec.path] = source if spec.role == "input" else FactorizedLinear.from_source(source, bias)
        stats.append(module_stats(spec, weight, source, row_weights, method.serving_dense))
    install_modules(model, config, modules)
    model.config.quantization_config = EmbcompressQuantizationConfig.from_compression(config)
    params_after = sum(p.numel() for p in model.parameters())
    budget = {**options.budget(), "ranks": {m.role: m.rank for m in config.modules}}
    return CompressionResult(config, stats, params_before, params_after, budget)


def module_stats(
    spec: ModuleSpec,
    weight: torch.Tensor,
    source: CompressedEmbedding,
    row_weights: torch.Tensor | None = None,
    serving_dense: bool = False,
) -> ModuleStats:
    """Size and fidelity of ``source`` (the fitted module of ``spec``) against the dense ``weight``."""
    dense_params = weight.numel()
    params, nbytes = (0, 0) if spec.tied_to else module_bytes(source)
    return ModuleStats(
        path=spec.path,
        role=spec.role,
        shape=(int(weight.shape[0]), int(weight.shape[1])),
        rank=spec.rank,
        tied_to=spec.tied_to,
        params_before=0 if spec.tied_to else dense_params,
        params_after=params,
        bytes_before=0 if spec.tied_to else dense_params * weight.element_size(),
        bytes_after=nbytes,
        relative_error=relative_error(weight, source),
        weighted_relative_error=None if row_weights is None else relative_error(weight, source, row_weights),
        serving_dense=serving_dense,
    )


def convert_factor_dtype(model: nn.Module, factor_dtype: str) -> CompressionConfig:
    """Re-store the factors of a factorized ``model`` as ``factor_dtype`` in place (e.g. int8 after
    distillation); returns the updated config, also set as the model's ``quantization_config``."""
    dtype_from_name(factor_dtype)
    qconfig = getattr(model.config, "quantization_config", None)
    if not isinstance(qconfig, EmbcompressQuantizationConfig):
        raise EmbcompressError("the model holds no embcompress factorization to convert")
    config = copy.deepcopy(qconfig.compression)
    modules: dict[str, nn.Module] = {}
    for spec in sorted(config.modules, key=lambda s: s.role != "input"):
        spec.factor_dtype = factor_dtype
        current = model.get_submodule(spec.path)
        own = current if spec.role == "input" else current.source
        source = modules[spec.tied_to] if spec.tied_to else own.with_factor_dtype(factor_dtype)
        modules[spec.path] = source if spec.role == "input" else FactorizedLinear.from_source(source, current.bias)
    install_modules(model, config, modules)
    model.config.quantization_config = EmbcompressQuantizationConfig.from_compression(config)
    return config


def _progress_total(model: nn.Module, options: FactorizeOptions) -> int | None:
    steps = get_method(options.method).progress_total(options.method_config)
    if steps is None:
        return None
    found = find_targets(model)
    both = {"input", "output"} <= set(options.targets) and found.output_module is not None and not found.tied
    return steps * (2 if both else 1)


def factorize_checkpoint(
    model_name: str,
    out: str | os.PathLike[str],
    options: FactorizeOptions,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    row_weights: torch.Tensor | None = None,
    frequency: FrequencyOptions | None = None,
) -> CompressionResult:
    """Load ``model_name``, factorize its embeddings per ``options`` and write a checkpoint to ``out``.

    All input is validated (options, output folder, model, ranks, frequency data) before anything is
    written. ``frequency`` counts a corpus with the model's tokenizer into row weights (ignored when
    ``row_weights`` is given).
    """
    reporter = reporter or LoggingReporter()
    load = load or LoadOptions()
    out_path = Path(out)
    check_weights_use(get_method(options.method), row_weights is not None or frequency is not None)
    if row_weights is None and frequency is not None:
        frequency.check()
    check_output_dir(out_path, overwrite)
    inputs = input_paths(model_name, paths=[frequency.path if frequency else None], gguf_file=load.gguf_file)
    with reserve_output(out_path, overwrite, inputs):
        source, model, tokenizer = load_source(model_name, load, reporter)
        freqs: TokenFrequencies | None = None
        if row_weights is None and frequency is not None:
            with reporter.stage(f"counting tokens in {frequency.path}"):
                freqs = token_frequencies(tokenizer, frequency, model.get_input_embeddings().weight.shape[0])
            row_weights = freqs.weights
        with reporter.stage(f"fitting {options.method}", total=_progress_total(model, options)):
            weight = getattr(model.get_input_embeddings(), "weight", None)  # absent: factorize_model says so
            priority = None if weight is None else token_priority(tokenizer, weight.shape[0])
            result = factorize_model(
                model, options, row_weights=row_weights, progress=_advance(reporter), priority=priority
            )
        summary = {**result.to_dict(), "source": source.name, "options": options.to_dict()}
        if freqs is not None:
            summary["frequency"] = freqs.info
        with reporter.stage(f"writing {out_path}"):
            write_checkpoint(model, out_path, source, tokenizer, summary, overwrite)
    return result


def _advance(reporter: Reporter) -> ProgressFn:
    """Adapter from a method's ``ctx.progress(step, total, metrics)`` to ``reporter.advance``."""
    return lambda step, total, metrics: reporter.advance(1, **metrics)
