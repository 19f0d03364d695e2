"""Write and read compressed checkpoints (safetensors + ``config.json``), atomically.

Output is written to a hidden temporary folder beside the target and renamed at the end, so an
interrupted run never leaves a half-written checkpoint and the input folder is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from . import validation
from .card import render_card
from .config import CompressionConfig
from .errors import CheckpointError
from .hf_integration import EmbcompressQuantizationConfig, add_load_guard_file, load_guard_tensors
from .kinds import detect_kind
from .modules import CompressedEmbedding
from .outputs import atomic_output, check_output, check_outside
from .sentence import attach_pipeline, load_pipeline, module_folders
from .sources import WEIGHT_SUFFIXES, ModelSource, model_class, source_paths
from .version import __version__

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: Largest safetensors file written before the weights are split into shards (transformers' default).
MAX_SHARD_BYTES = 5 * 10**9
SUMMARY_NAME = "embcompress.json"
_SKIP_COPY = {"config.json", "README.md", ".gitattributes", SUMMARY_NAME, INDEX_NAME}


def check_output_dir(out: Path, overwrite: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Refuse, before any work, an output folder that overlaps ``inputs``, exists without ``overwrite``,
    is being written by another run, or whose parent is missing or unwritable (see :mod:`.outputs`)."""
    check_output(out, overwrite, inputs)


def check_outside_input(out: Path, source: Path) -> None:
    """Refuse an output that is, contains or lies inside the input ``source`` (the input is never modified)."""
    check_outside(out, [source])


def atomic_output_dir(
    out: Path, overwrite: bool = False, inputs: Iterable[str | os.PathLike[str]] = ()
) -> contextlib.AbstractContextManager[Path]:
    """A temporary folder that replaces ``out`` only if the block succeeds (:func:`.outputs.atomic_output`)."""
    return atomic_output(out, overwrite, inputs)


def state_dict_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates (re-tied on load) and with no shared storage left."""
    tied_targets = set(getattr(model, "all_tied_weights_keys", {}) or {})
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in model.state_dict().items():
        if key in tied_targets:
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensor = tensor.detach().contiguous()
        if ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        tensors[key] = tensor.cpu()
    return tensors


def copy_aux_files(source_dir: Path | None, dest: Path) -> None:
    """Copy tokenizer and other non-weight files, and every sentence-transformers module folder of
    ``modules.json`` whole (a Dense module keeps its own weights)."""
    if source_dir is None or not source_dir.is_dir():
        return
    modules = module_folders(source_dir)
    for item in source_dir.iterdir():
        if item.name in _SKIP_COPY or item.name.startswith(".") or item.suffix in WEIGHT_SUFFIXES:
            continue
        if item.is_dir():
            if item.name in modules or not any(p.suffix in WEIGHT_SUFFIXES for p in item.rglob("*")):
                shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files."""
    return any((folder / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: a factorized module's compute dtype, else its first float parameter's."""
    for module in model.modules():
        if isinstance(module, CompressedEmbedding):
            return module.compute_dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def shard_tensors(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split ``tensors`` (in order) into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def write_weights(tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards with the standard
    ``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes``."""
    shards = shard_tensors(tensors, max_shard_bytes)
    count = len(shards)
    names = [WEIGHTS_NAME] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        (folder / name).chmod(0o644)
        weight_map.update(dict.fromkeys(shard, name))
    if count > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_model_files(
    model: nn.Module,
    folder: Path,
    source_dir: Path | None = None,
    tokenizer: Any | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write weights (sharded above ``max_shard_bytes``), config, generation config and auxiliary
    files of ``model`` into ``folder``."""
    copy_aux_files(source_dir, folder)
    tensors = state_dict_to_save(model)
    qconfig = getattr(model.config, "quantization_config", None)
    if isinstance(qconfig, EmbcompressQuantizationConfig):
        tensors.update(load_guard_tensors(qconfig.compression))
    write_weights(tensors, folder, max_shard_bytes)
    model.config.architectures = [type(model).__name__]
    # `from_pretrained` defaults to dtype "auto": without this, a config with no dtype would take the
    # dtype of the first tensor in the file, which may be a float16 or int8 factor.
    model.config.dtype = compute_dtype(model)
    model.config.save_pretrained(str(folder))
    if isinstance(qconfig, EmbcompressQuantizationConfig):
        add_load_guard_file(folder / "config.json")
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(str(folder))
    if tokenizer is not None and not has_tokenizer(folder):
        tokenizer.save_pretrained(str(folder))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON with sorted keys and the package version."""
    payload = {"embcompress_version": __version__, **data}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_compression_config(folder: Path) -> CompressionConfig:
    """The validated :class:`CompressionConfig` of a compressed checkpoint folder (:mod:`.validation`)."""
    return validation.read_compression_config(folder)


def expected_factor_shapes(config: CompressionConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor the weights file must hold for the factorized modules."""
    return validation.expected_factor_shapes(config)


def expected_factor_keys(config: CompressionConfig) -> set[str]:
    """The tensor names the weights file must hold for the factorized modules."""
    return set(expected_factor_shapes(config))


def verify_checkpoint_keys(folder: Path, config: CompressionConfig) -> None:
    """Raise if a factor tensor is missing or misshapen, or an unexpected one (e.g. a dense weight) is present."""
    validation.verify_tensors(validation.weight_files(folder), config, folder)


def load(
    folder: str | os.PathLike[str],
    model_cls: type | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Load a compressed checkpoint after checking it (:mod:`.validation`); nothing is initialised at random.

    The config and the factor tensors (names, shapes) are checked before loading. ``strict`` (the
    default) also refuses a model weight that was missing, mismatched or left over, and factors holding
    NaN or infinity. ``dtype`` defaults to the dtype saved in ``config.json`` (``"auto"``), as plain
    ``from_pretrained`` does. A sentence-transformers folder's pipeline (``modules.json``) is attached to
    the model (:mod:`embcompress.sentence`).
    """
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' does not exist")
    config = validation.check_checkpoint(path)
    hf_config = transformers.AutoConfig.from_pretrained(str(path))
    cls = model_cls or model_class(hf_config, is_gguf=False)
    kwargs.setdefault("ignore_mismatched_sizes", strict)  # mismatches become one line below, not a report
    model, info = cls.from_pretrained(
        str(path), dtype=dtype or "auto", use_safetensors=True, output_loading_info=True, **kwargs
    )
    if strict:
        validation.check_load_info(info, path)
        validation.check_finite(model, path)
    bad = sorted(set(info.get("missing_keys", [])) & expected_factor_keys(config))
    if bad:
        raise CheckpointError(f"factor tensor(s) not loaded from '{folder}': {', '.join(bad[:5])}")
    return attach_pipeline(model.to(device).eval(), load_pipeline(path))


def write_checkpoint(
    model: nn.Module,
    out: str | os.PathLike[str],
    source: ModelSource,
    tokenizer: Any | None,
    summary: dict[str, Any],
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
    quality: str | None = None,
) -> None:
    """Atomically write the compressed checkpoint, its summary JSON and its model card (with the
    ``quality`` table when measured); ``extra(folder)`` adds more files before the folder is moved into place."""
    with atomic_output_dir(Path(out), overwrite, source_paths(source)) as tmp:
        save_model_files(model, tmp, None if source.gguf_file else source.path, tokenizer)
        write_json(tmp / SUMMARY_NAME, summary)
        readme, st_layout = _source_card_facts(source)
        card = render_card(
            str(summary.get("source", source.name)),
            type(model).__name__,
            summary,
            quality,
            kind=detect_kind(model),
            sentence_transformers=st_layout,
            source_readme=readme,
        )
        (tmp / "README.md").write_text(card)
        if extra is not None:
            extra(tmp)


def _source_card_facts(source: ModelSource) -> tuple[str | None, bool]:
    """The source folder's README text (its license goes into the card) and whether it has the
    sentence-transformers layout."""
    if source.path is None or not source.path.is_dir():
        return None, False
    readme = source.path / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else None
    return text, (source.path / "modules.json").is_file()
