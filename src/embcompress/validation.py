"""The one checkpoint validator.

:func:`embcompress.load`, the transformers quantizer (``from_pretrained`` after ``import
embcompress``), ``embcompress inspect`` and ``embcompress report`` all check a compressed checkpoint
here, and every problem is one line naming the value and what to do:

* :func:`parse_config`: the ``quantization_config`` section: types, values, registered methods, and
  that the modules it describes can be built;
* :func:`verify_tensors`: every tensor the compressed modules need is in the weights files with its
  shape, and no dense weight is left where a compressed module now lives (safetensors headers only);
* :func:`check_load_info`: after loading, no weight of the whole model was missing, mismatched or
  left over (so nothing was initialised at random);
* :func:`check_finite`: the loaded factors hold no NaN or infinity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .config import QUANT_METHOD, CompressionConfig
from .errors import CheckpointError, EmbcompressError
from .methods import get_method
from .modules import CompressedEmbedding
from .surgery import build_modules

#: Checkpoint files that hold weights (the load guard file named in ``config.json`` never exists).
WEIGHTS_GLOB = "*.safetensors"
#: Exceptions a method's module constructor may raise on options no writer produces.
_BUILD_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)


def read_config_json(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, with one-line errors for a missing, unreadable or non-object file."""
    file = folder / "config.json"
    if not file.is_file():
        raise CheckpointError(f"no config.json in '{folder}': not a model folder")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config.json in '{folder}' is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"config.json in '{folder}' is not a JSON object; restore it from the original model")
    return raw


def quant_method(raw: dict[str, Any], folder: Path) -> str | None:
    """The ``quant_method`` named by a ``config.json`` dict (``None``: not quantized)."""
    section = raw.get("quantization_config")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise CheckpointError(
            f"invalid quantization_config in '{folder}/config.json': it is a {type(section).__name__}, not an "
            "object (re-create the checkpoint with embcompress)"
        )
    method = section.get("quant_method")
    return method if isinstance(method, str) else None


def read_compression_config(folder: Path) -> CompressionConfig:
    """The validated :class:`CompressionConfig` of a compressed checkpoint folder."""
    raw = read_config_json(folder)
    if quant_method(raw, folder) != QUANT_METHOD:
        raise CheckpointError(
            f"'{folder}' is not an embcompress checkpoint (config.json has no quantization_config "
            f"with quant_method '{QUANT_METHOD}')"
        )
    return parse_config(raw["quantization_config"])


def parse_config(section: Any) -> CompressionConfig:
    """A ``quantization_config`` section as a :class:`CompressionConfig`, checked down to buildable modules."""
    config = CompressionConfig.from_dict(section)
    for spec in config.modules:
        try:
            get_method(spec.method)
        except EmbcompressError as exc:
            raise CheckpointError(f"invalid quantization_config in config.json: module '{spec.path}': {exc}") from None
    build_meta(config)
    return config


def build_meta(config: CompressionConfig) -> dict[str, nn.Module]:
    """The empty modules ``config`` describes, on the meta device; a config they cannot be built from is one line."""
    try:
        return build_modules(config, torch.float32, device="meta")
    except CheckpointError:
        raise
    except EmbcompressError as exc:
        raise CheckpointError(
            f"invalid quantization_config in config.json: {exc} (re-create the checkpoint with embcompress)"
        ) from None
    except _BUILD_ERRORS as exc:
        raise CheckpointError(
            f"invalid quantization_config in config.json: its modules cannot be built ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); re-create the checkpoint with embcompress"
        ) from None


def expected_factor_shapes(config: CompressionConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor the weights files must hold for the compressed modules."""
    modules = build_meta(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in config.modules:
        if not spec.owns_factors:
            continue
        prefix = spec.path if spec.role == "input" else f"{spec.path}.source"
        source = modules[spec.path] if spec.role == "input" else modules[spec.path].source
        shapes.update({f"{prefix}.{name}": tuple(t.shape) for name, t in source.state_dict().items()})
    return shapes


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights files of ``folder`` (one file or shards)."""
    files = sorted(folder.glob(WEIGHTS_GLOB))
    if not files:
        raise CheckpointError(f"no .safetensors weights in '{folder}'")
    return files


def stored_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors headers (no tensor is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"corrupt safetensors file '{file}': {str(exc).splitlines()[0]}") from None
    return shapes


def verify_tensors(files: list[Path], config: CompressionConfig, where: Path | str) -> None:
    """Refuse weights files missing a compressed tensor, holding one of the wrong shape, or still holding a
    dense weight where a compressed module lives (the empty load guards excepted)."""
    stored = stored_shapes(files)
    expected = expected_factor_shapes(config)
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise CheckpointError(
            f"checkpoint '{where}' is missing factor tensor(s): {', '.join(missing[:5])}; the weights file is "
            "incomplete (re-create the checkpoint)"
        )
    misshapen = [
        f"{k} {list(stored[k])} (config says {list(v)})" for k, v in sorted(expected.items()) if stored[k] != v
    ]
    if misshapen:
        raise CheckpointError(
            f"checkpoint '{where}' has factor tensor(s) of the wrong shape: {', '.join(misshapen[:3])}; the weights "
            "do not match config.json (re-create the checkpoint)"
        )
    unexpected = _unexpected(stored, expected, config)
    if unexpected:
        raise CheckpointError(
            f"checkpoint '{where}' has unexpected tensor(s): {', '.join(unexpected[:5])}; a compressed module holds "
            "no such weight (re-create the checkpoint)"
        )


def _unexpected(
    stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], config: CompressionConfig
) -> list[str]:
    replaced = [p for spec in config.modules for p in (spec.path, *spec.aliases)]
    guards = {f"{spec.path}.weight" for spec in config.modules if spec.role == "input"}
    return sorted(
        k
        for k in set(stored) - set(expected)
        if any(k.startswith(f"{p}.") for p in replaced)
        and not k.endswith(".bias")
        and not (k in guards and stored[k] == (0,))
    )


def check_checkpoint(folder: Path) -> CompressionConfig:
    """:func:`read_compression_config` and :func:`verify_tensors` of a checkpoint folder (headers only)."""
    config = read_compression_config(folder)
    verify_tensors(weight_files(folder), config, folder)
    return config


def check_load_info(info: dict[str, Any], where: Path | str) -> None:
    """Refuse a load that left weights of the model missing (initialised at random), mismatched or unused."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"checkpoint '{where}' lacks weight(s) of the model: {', '.join(missing[:5])}; they would be "
            "initialised at random (restore the weights file or re-create the checkpoint)"
        )
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        shown = ", ".join(f"{k} {list(a)} (model needs {list(b)})" for k, a, b in mismatched[:3])
        raise CheckpointError(
            f"checkpoint '{where}' has weight(s) of the wrong shape: {shown}; they do not match config.json "
            "(re-create the checkpoint)"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise CheckpointError(
            f"checkpoint '{where}' holds weight(s) the model does not use: {', '.join(unexpected[:5])}; the weights "
            "file does not belong to this config.json (re-create the checkpoint)"
        )


def check_finite(model: nn.Module, where: Path | str) -> None:
    """Refuse compressed modules whose loaded tensors hold NaN or infinite values."""
    seen: set[int] = set()
    for path, module in model.named_modules():
        if not isinstance(module, CompressedEmbedding) or id(module) in seen:
            continue
        seen.add(id(module))
        for name, tensor in module.state_dict(prefix=f"{path}.").items():
            if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
                raise CheckpointError(
                    f"checkpoint '{where}': factor tensor {name} holds NaN or infinite values; the checkpoint is "
                    "corrupt (re-create it, e.g. distil again with a lower --lr)"
                )
