"""Registration with transformers so ``AutoModel*.from_pretrained`` rebuilds factorized modules.

Importing :mod:`embcompress` registers the ``"embcompress"`` quantization method. A compressed
checkpoint's ``config.json`` names it in ``quantization_config``; transformers then asks our
quantizer to swap in empty factorized modules before it loads the factor tensors by name.

Without the import, transformers 5 only logs "Unknown quantization type ... we will skip the
quantization" and would initialise the embeddings at random. Two guards make plain loading fail
loudly instead:

* ``config.json`` names :data:`LOAD_GUARD_FILE` as its ``transformers_weights`` (the weights file
  transformers must load). The file never exists, so plain ``from_pretrained`` stops with
  ``No such file or directory: .../EMBCOMPRESS-CHECKPOINT--pip-install-embcompress-...`` whatever its
  arguments (``ignore_mismatched_sizes=True`` included). The registered quantizer removes the entry
  before transformers resolves the weights file (:meth:`EmbcompressHfQuantizer.update_attn_implementation`,
  and the older ``update_tp_plan`` hook), so the real ``model.safetensors`` is loaded.
* :func:`load_guard_tensors` are empty tensors in the weights file for code that reads it without
  transformers' file resolution: an empty ``<input embedding>.weight`` raises on the size mismatch, and a
  tensor named :data:`LOAD_GUARD_NOTE` shows in transformers' load report. The quantizer adds both to
  the model's ignored unexpected keys, so loading after ``import embcompress`` stays quiet.

After the import, the quantizer checks the checkpoint with :mod:`.validation` before any weight is
loaded (a missing or misshapen factor is refused, never zero-filled) and refuses NaN factors after.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
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
from .validation import check_finite, parse_config, verify_tensors

#: Name of the empty guard tensor shown in transformers' load report when embcompress is not imported.
LOAD_GUARD_NOTE = "EMBCOMPRESS CHECKPOINT: pip install embcompress, then import embcompress before from_pretrained"
#: The weights file ``config.json`` names for transformers; it never exists (see the module docstring).
LOAD_GUARD_FILE = (
    "EMBCOMPRESS-CHECKPOINT--pip-install-embcompress-then-import-embcompress-before-from_pretrained.safetensors"
)
#: The ``config.json`` key transformers 5 reads the weights file name from.
WEIGHTS_KEY = "transformers_weights"


def add_load_guard_file(config_file: Path) -> None:
    """Name :data:`LOAD_GUARD_FILE` as the weights file in a written ``config.json`` (same JSON layout)."""
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    raw[WEIGHTS_KEY] = LOAD_GUARD_FILE
    config_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def drop_load_guard_file(config: Any) -> Any:
    """Remove :data:`LOAD_GUARD_FILE` from a loaded transformers config so the real weights are found."""
    if getattr(config, WEIGHTS_KEY, None) == LOAD_GUARD_FILE:
        delattr(config, WEIGHTS_KEY)
    return config


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
        self.compression = parse_config(kwargs)

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
    """Checks the checkpoint, then swaps in empty factorized modules on the meta device before weights are loaded."""

    requires_calibration = False

    def update_attn_implementation(self, config: Any) -> Any:
        """Called on the model config before transformers resolves the weights file: drop the load guard."""
        return drop_load_guard_file(super().update_attn_implementation(config))

    def update_tp_plan(self, config: Any) -> Any:
        """The same hook in transformers releases that call this one instead (5.0)."""
        return drop_load_guard_file(config)

    def _process_model_before_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> None:
        files = [Path(f) for f in kwargs.get("checkpoint_files") or [] if str(f).endswith(".safetensors")]
        self._where = str(files[0].parent) if files else "checkpoint"
        if files:
            verify_tensors(files, self.quantization_config.compression, self._where)
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
        check_finite(model, getattr(self, "_where", "checkpoint"))
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
