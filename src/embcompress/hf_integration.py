"""Registration with transformers so ``AutoModel*.from_pretrained`` rebuilds factorized modules.

Importing :mod:`embcompress` registers the ``"embcompress"`` quantization method. A compressed
checkpoint's ``config.json`` names it in ``quantization_config``; transformers then asks our
quantizer to swap in empty factorized modules before it loads the factor tensors by name.

Without the import, transformers 5 only logs "Unknown quantization type ... we will skip the
quantization" and would initialise the embeddings at random. :func:`load_guard_tensors` are empty
tensors a checkpoint writer adds so that plain loading fails loudly instead: an empty
``<input embedding>.weight`` makes transformers raise on the size mismatch (it does unless
``ignore_mismatched_sizes=True``), and a tensor named :data:`LOAD_GUARD_NOTE` shows in the load report
printed just above that error, telling the user what to do. The registered quantizer adds both to
the model's ignored unexpected keys, so loading after ``import embcompress`` stays quiet.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .config import QUANT_METHOD, CompressionConfig
from .surgery import build_modules, install_modules, resolve_paths

#: Name of the empty guard tensor shown in transformers' load report when embcompress is not imported.
LOAD_GUARD_NOTE = "EMBCOMPRESS CHECKPOINT: pip install embcompress, then import embcompress before from_pretrained"


def load_guard_keys(config: CompressionConfig) -> list[str]:
    """Names of the guard tensors for ``config``: the note and ``<path>.weight`` of each input embedding."""
    return [LOAD_GUARD_NOTE, *(f"{spec.path}.weight" for spec in config.modules if spec.role == "input")]


def load_guard_tensors(config: CompressionConfig) -> dict[str, torch.Tensor]:
    """Empty ``uint8`` tensors to add to a compressed checkpoint's weights (see the module docstring)."""
    return {key: torch.zeros(0, dtype=torch.uint8) for key in load_guard_keys(config)}


class EmbcompressQuantizationConfig(QuantizationConfigMixin):
    """``quantization_config`` section of a compressed checkpoint (wraps :class:`CompressionConfig`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        self.quant_method = QUANT_METHOD
        self.compression = CompressionConfig.from_dict(kwargs)

    @classmethod
    def from_compression(cls, compression: CompressionConfig) -> EmbcompressQuantizationConfig:
        return cls(**compression.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, **self.compression.to_dict()}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbcompressQuantizationConfig:
        return type(self)(**copy.deepcopy(self.to_dict(), memo))


class EmbcompressHfQuantizer(HfQuantizer):
    """Swaps in empty factorized modules on the meta device before weights are loaded."""

    requires_calibration = False

    def _process_model_before_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> None:
        compression = resolve_paths(model, copy.deepcopy(self.quantization_config.compression))
        dtype = kwargs.get("dtype") or next(model.parameters()).dtype
        modules = build_modules(compression, compute_dtype=dtype, device="meta")
        install_modules(model, compression, modules)
        ignored = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
        guards = [re.escape(key) for key in load_guard_keys(compression)]
        model._keys_to_ignore_on_load_unexpected = ignored | {f"^{key}$" for key in guards}
        # Some root-level `_init_weights` (e.g. T5's) write into `<embedding>.weight`, which a
        # factorized module does not have; the root holds no weights of its own to initialise.
        model._is_hf_initialized = True

    def _process_model_after_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        # Factorized modules are ordinary float modules: keep .half()/.float()/training available.
        model.is_quantized = False
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


def register() -> None:
    """Register the config and quantizer with transformers (idempotent)."""
    AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = EmbcompressQuantizationConfig
    AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = EmbcompressHfQuantizer
