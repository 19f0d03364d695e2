"""High-level pipelines used by the CLI and by scripts: source -> model -> compress -> checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .budget import budget_from
from .card import render_card
from .checkpoint import (
    SUMMARY_NAME,
    atomic_output_dir,
    check_output_dir,
    densify,
    save_model_files,
    write_json,
)
from .checkpoint import load as load_compressed
from .compress import CompressionResult, FactorizeOptions, factorize_model
from .errors import EmbcompressError
from .frequency import FrequencyOptions, TokenFrequencies, token_frequencies
from .methods import get_method
from .methods.base import ProgressFn
from .progress import LoggingReporter, Reporter
from .quant import dtype_from_name
from .sources import ModelSource, load_model, load_tokenizer, resolve_source

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadOptions:
    """How to load the source model."""

    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in TORCH_DTYPES:
            raise EmbcompressError(f"unknown dtype '{self.dtype}'; valid: {', '.join(TORCH_DTYPES)}")
        return TORCH_DTYPES[self.dtype]


def check_device(device: str) -> None:
    """Refuse a device this machine does not have."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EmbcompressError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbcompressError(f"device '{device}' requested but CUDA is not available; use --device cpu")


def validate_options(options: FactorizeOptions, frequency: FrequencyOptions | None = None) -> None:
    """Checks that need no model: method, its options, factor dtype, budgets, frequency data."""
    method = get_method(options.method)
    method.validate_options(options.method_options)
    dtype_from_name(options.factor_dtype)
    for name in ("rank", "rank_input", "rank_output"):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise EmbcompressError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    budget_from(options.rank, options.energy, options.ratio)
    if method.weights_use == "required" and frequency is None:
        raise EmbcompressError(f"method '{method.name}' needs token frequencies; pass --freq-data PATH")
    if method.weights_use == "none" and frequency is not None:
        raise EmbcompressError(f"method '{method.name}' does not use token frequencies; drop --freq-data")
    if frequency is not None:
        frequency.check()


def _progress_total(model: nn.Module, options: FactorizeOptions) -> int | None:
    from .surgery import find_targets

    steps = get_method(options.method).progress_total(options.method_options)
    if steps is None:
        return None
    found = find_targets(model)
    both = {"input", "output"} <= set(options.targets) and found.output_module is not None and not found.tied
    return steps * (2 if both else 1)


def load_source(
    name: str, load: LoadOptions, reporter: Reporter | None = None
) -> tuple[ModelSource, nn.Module, Any | None]:
    """Resolve and load ``name`` with its tokenizer."""
    reporter = reporter or LoggingReporter()
    load.torch_dtype()
    check_device(load.device)
    source = resolve_source(name, load.gguf_file)
    with reporter.stage(f"loading {source.name}"):
        model = load_model(source, load.torch_dtype(), load.device, load.trust_remote_code)
        tokenizer = load_tokenizer(source, load.trust_remote_code)
    return source, model, tokenizer


def write_checkpoint(
    model: nn.Module,
    out: Path,
    source: ModelSource,
    tokenizer: Any | None,
    summary: dict[str, Any],
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Atomically write the compressed checkpoint, its summary JSON and its model card
    (``extra(folder)`` adds more files before the folder is moved into place)."""
    with atomic_output_dir(out, overwrite) as tmp:
        save_model_files(model, tmp, None if source.gguf_file else source.path, tokenizer)
        write_json(tmp / SUMMARY_NAME, summary)
        (tmp / "README.md").write_text(render_card(source.name, type(model).__name__, summary))
        if extra is not None:
            extra(tmp)


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
    validate_options(options, frequency if row_weights is None else None)
    check_output_dir(out_path, overwrite)
    source, model, tokenizer = load_source(model_name, load, reporter)
    freqs: TokenFrequencies | None = None
    if row_weights is None and frequency is not None:
        with reporter.stage(f"counting tokens in {frequency.path}"):
            freqs = token_frequencies(tokenizer, frequency, model.get_input_embeddings().weight.shape[0])
        row_weights = freqs.weights
    with reporter.stage(f"fitting {options.method}", total=_progress_total(model, options)):
        result = factorize_model(model, options, row_weights=row_weights, progress=_advance(reporter))
    summary = {**result.to_dict(), "source": source.name, "options": options.to_dict()}
    if freqs is not None:
        summary["frequency"] = freqs.info
    with reporter.stage(f"writing {out_path}"):
        write_checkpoint(model, out_path, source, tokenizer, summary, overwrite)
    return result


def _advance(reporter: Reporter) -> ProgressFn:
    """Adapter from a method's ``ctx.progress(step, total, metrics)`` to ``reporter.advance``."""

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        reporter.advance(1, **metrics)

    return progress


def export_dense(folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> nn.Module:
    """Write a vanilla transformers checkpoint of a compressed model (factors multiplied out)."""
    out_path = Path(out)
    check_output_dir(out_path, overwrite)
    model = load_compressed(folder)
    dense = densify(model)
    src = ModelSource(str(folder), "local", Path(folder))
    with atomic_output_dir(out_path, overwrite) as tmp:
        save_model_files(dense, tmp, src.path)
    return dense
