"""The sentence-transformers pipeline of a model folder (``modules.json``), evaluated without the library.

A sentence-transformers folder lists its modules in ``modules.json``: a Transformer module (the
Hugging Face model in the folder root) and after it Pooling, Dense, Normalize and others in their own
sub-folders, with prompts in ``config_sentence_transformers.json``. Users of such a folder get the
sentence embedding at the end of that chain, so that is what reports and distillation measure:

* :func:`transformers_class` -- the transformers class the Transformer module loads (``AutoModel``
  for a sentence encoder), whatever architecture ``config.json`` names;
* :class:`SentencePipeline` -- the modules after the Transformer (Pooling in every mode, Dense with
  its safetensors weights, Normalize, Dropout), run on the last hidden state with plain torch;
* :func:`attach_pipeline` / :func:`pipeline_of` -- the pipeline travels with a loaded model (copies
  included) so every measurement of that model follows it; :func:`sentence_embedding` falls back
  to mean pooling for a bare encoder without one.

Modules it cannot evaluate (an LSTM, a Router, pickled Dense weights) leave the pipeline out with one
logged line; the folder is still copied whole by the checkpoint writer.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from torch import nn

from .errors import EmbcompressError

logger = logging.getLogger(__name__)

MODULES_NAME = "modules.json"
SETTINGS_NAME = "config_sentence_transformers.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
#: Attribute of a loaded model that holds its :class:`SentencePipeline`.
PIPELINE_ATTR = "embcompress_sentence_pipeline"
#: ``transformer_task`` of a Transformer module -> the transformers class it loads.
TASK_CLASSES = {"feature-extraction": "AutoModel", "fill-mask": "AutoModelForMaskedLM"}
#: Transformer-like module class names -> the task they load when their config names none.
TRANSFORMER_MODULES = {"Transformer": "feature-extraction", "MLMTransformer": "fill-mask"}


class UnsupportedPipeline(EmbcompressError):
    """A module of ``modules.json`` that embcompress cannot evaluate."""


@dataclass(frozen=True)
class ModuleEntry:
    """One line of ``modules.json``."""

    name: str
    path: str
    type: str

    @property
    def kind(self) -> str:
        """The class name (``Pooling``), whatever package path the saving version used."""
        return self.type.rsplit(".", 1)[-1]


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EmbcompressError(f"cannot read '{file}': {exc}") from None


def read_modules(folder: Path | None) -> list[ModuleEntry] | None:
    """The modules of a sentence-transformers folder in order; ``None`` without ``modules.json`` or with
    one that lists no modules (a line is logged when it cannot be read)."""
    file = None if folder is None else Path(folder) / MODULES_NAME
    if file is None or not file.is_file():
        return None
    try:
        raw = _read_json(file)
    except EmbcompressError as exc:
        logger.warning("%s; the folder is treated as a plain transformers folder", exc)
        return None
    if not isinstance(raw, list) or not all(isinstance(m, dict) and "type" in m for m in raw):
        logger.warning("'%s' is not a sentence-transformers module list; the folder is treated as plain", file)
        return None
    if not raw:
        return None
    ordered = sorted(raw, key=lambda m: int(m.get("idx", 0)))
    return [ModuleEntry(str(m.get("name", "")), str(m.get("path", "")), str(m["type"])) for m in ordered]


def module_folders(folder: Path | None) -> set[str]:
    """Sub-folders that hold sentence-transformers modules (first path part of every non-root module)."""
    return {Path(m.path).parts[0] for m in read_modules(folder) or [] if m.path}


def transformer_task(folder: Path) -> str | None:
    """The ``transformer_task`` of the folder's first module when it is a Transformer kept in the root;
    ``None`` for a folder without ``modules.json`` or with another layout."""
    entries = read_modules(folder)
    if not entries or entries[0].kind not in TRANSFORMER_MODULES or entries[0].path:
        return None
    config = folder / TRANSFORMER_CONFIG
    settings = _read_json(config) if config.is_file() else {}
    return str(settings.get("transformer_task") or TRANSFORMER_MODULES[entries[0].kind])


def transformers_class(folder: Path) -> type | None:
    """The transformers Auto class the folder's Transformer module loads, or ``None`` (no
    sentence-transformers layout, or a task embcompress leaves to ``config.json``)."""
    name = TASK_CLASSES.get(transformer_task(folder) or "")
    return getattr(transformers, name) if name else None


# -- the modules after the Transformer ----------------------------------------------------------------
Features = dict[str, Any]
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The pooling modes of a Pooling config, new (``pooling_mode``) or legacy (``pooling_mode_*_tokens``)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(name for key, name in _LEGACY_POOLING.items() if config.get(key))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise UnsupportedPipeline(f"pooling mode(s) {bad} (known: {', '.join(POOLING_MODES)})")
    return modes


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first attended position (left padding aware)."""
    return mask.to(torch.int32).argmax(dim=1)


def _without_prompt(mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """``mask`` with the ``prompt_length`` positions after any left padding switched off."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return mask.masked_fill(positions < (_first_real(mask) + prompt_length)[:, None], 0)


class Pooling(nn.Module):
    """Token embeddings -> one vector per sequence, in one or several (concatenated) modes."""

    def __init__(self, modes: tuple[str, ...], include_prompt: bool = True) -> None:
        super().__init__()
        self.modes, self.include_prompt = modes, include_prompt

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path) -> Pooling:
        return cls(pooling_modes(config), bool(config.get("include_prompt", True)))

    def describe(self) -> str:
        return f"Pooling({'+'.join(self.modes)}{'' if self.include_prompt else ', prompt excluded'})"

    def forward(self, features: Features) -> Features:
        tokens = features["token_embeddings"]
        full = features["attention_mask"]
        mask = full
        if not self.include_prompt and features.get("prompt_length"):
            mask = _without_prompt(full, int(features["prompt_length"]))
        pooled = [self._pool(mode, tokens, mask, full) for mode in self.modes]
        features["sentence_embedding"] = torch.cat(pooled, dim=-1)
        return features

    @staticmethod
    def _pool(mode: str, tokens: torch.Tensor, mask: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(tokens.dtype)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        if mode == "cls":
            return tokens[rows, _first_real(mask)]
        if mode == "lasttoken":
            last = mask.shape[1] - 1 - mask.flip(1).to(torch.int32).argmax(dim=1)
            return (tokens * m)[rows, last]
        if mode == "max":
            return tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values
        if mode == "weightedmean":
            steps = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype)[None, :]
            m = m * (steps - _first_real(full)[:, None].to(tokens.dtype))[..., None]
        total, count = (tokens * m).sum(1), m.sum(1).clamp_min(1e-9)
        return total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


def _activation(path: str | None) -> nn.Module:
    """A Dense activation named by its class path; only ``torch.*`` module classes are imported (as
    sentence-transformers does without ``trust_remote_code``), anything else falls back to its Tanh."""
    if path is None:
        return nn.Tanh()
    module_name, _, class_name = path.rpartition(".")
    if not path.startswith("torch."):
        logger.warning("Dense activation '%s' is not a torch class: using Tanh, as sentence-transformers does", path)
        return nn.Tanh()
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise UnsupportedPipeline(f"Dense activation '{path}' does not exist in this torch") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UnsupportedPipeline(f"Dense activation '{path}' is not a torch.nn.Module class")
    return cls()


class Dense(nn.Module):
    """A linear map (optionally with a residual) and activation on one feature, weights from safetensors."""

    def __init__(self, config: dict[str, Any], activation: nn.Module) -> None:
        super().__init__()
        n_in, n_out = int(config["in_features"]), int(config["out_features"])
        self.linear = nn.Linear(n_in, n_out, bias=bool(config.get("bias", True)))
        self.activation = activation
        self.source = str(config.get("module_input_name") or "sentence_embedding")
        self.target = str(config.get("module_output_name") or self.source)
        self.use_residual = bool(config.get("use_residual", False))
        self.residual = nn.Linear(n_in, n_out, bias=False) if self.use_residual and n_in != n_out else None

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path) -> Dense:
        weights = folder / "model.safetensors"
        if not weights.is_file():
            stored = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise UnsupportedPipeline(
                f"Dense module '{folder.name}' has no model.safetensors (found {stored}); embcompress never unpickles"
            )
        module = cls(config, _activation(config.get("activation_function")))
        missing, unexpected = module.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise UnsupportedPipeline(f"Dense weights in '{weights}' do not fit: missing {missing}, extra {unexpected}")
        return module.eval()

    def describe(self) -> str:
        return f"Dense({self.linear.in_features}->{self.linear.out_features}, {type(self.activation).__name__})"

    def forward(self, features: Features) -> Features:
        x = features[self.source]
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        features[self.target] = out
        return features


class Normalize(nn.Module):
    """L2 normalisation of one feature (the sentence embedding unless configured otherwise)."""

    def __init__(self, source: str = "sentence_embedding", target: str | None = None) -> None:
        super().__init__()
        self.source, self.target = source, target or source

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path) -> Normalize:
        return cls(str(config.get("module_input_name") or "sentence_embedding"), config.get("module_output_name"))

    def describe(self) -> str:
        return "Normalize"

    def forward(self, features: Features) -> Features:
        if features.get(self.source) is not None:
            features[self.target] = F.normalize(features[self.source], p=2, dim=-1)
        return features


class Dropout(nn.Module):
    """Dropout: nothing at inference, which is all embcompress runs the pipeline for."""

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path) -> Dropout:
        return cls()

    def describe(self) -> str:
        return "Dropout"

    def forward(self, features: Features) -> Features:
        return features


#: Module class name in ``modules.json`` -> its evaluator (built from the module's config and folder).
MODULE_TYPES: dict[str, Callable[[dict[str, Any], Path], nn.Module]] = {
    "Pooling": Pooling.from_config,
    "Dense": Dense.from_config,
    "Normalize": Normalize.from_config,
    "Dropout": Dropout.from_config,
}


def _build(entry: ModuleEntry, folder: Path) -> nn.Module:
    if entry.kind not in MODULE_TYPES:
        raise UnsupportedPipeline(
            f"module '{entry.path or entry.name}' is a {entry.kind} (embcompress evaluates {', '.join(MODULE_TYPES)})"
        )
    where = folder / entry.path
    config_file = where / "config.json"
    config = _read_json(config_file) if entry.path and config_file.is_file() else {}
    try:
        return MODULE_TYPES[entry.kind](config, where)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedPipeline(f"module '{entry.path}' has a config embcompress cannot read ({exc})") from None


@dataclass
class SentencePipeline:
    """The modules after the Transformer, the default prompt, and where they came from.

    Attributes:
        head: The modules in order (each maps a feature dict to a feature dict).
        prompt: The default prompt (``default_prompt_name`` in ``config_sentence_transformers.json``).
        prompt_length: Tokens of ``prompt`` as the tokenizer counts them (set by :meth:`with_tokenizer`).
        max_seq_length: The Transformer module's truncation length (``sentence_bert_config.json``), if set.
        lower_case: The Transformer module lowercases its input (``do_lower_case``).
        folder: The folder read.
    """

    head: nn.ModuleList
    prompt: str | None = None
    prompt_length: int | None = None
    max_seq_length: int | None = None
    lower_case: bool = False
    folder: str = ""
    _device: torch.device | None = field(default=None, repr=False)

    @classmethod
    def from_folder(cls, folder: Path) -> SentencePipeline | None:
        """The pipeline of ``folder``; ``None`` without ``modules.json``; raises :class:`UnsupportedPipeline`."""
        entries = read_modules(folder)
        if entries is None:
            return None
        if entries[0].kind not in TRANSFORMER_MODULES or entries[0].path:
            raise UnsupportedPipeline(f"the first module is a {entries[0].kind} at '{entries[0].path}'")
        head = nn.ModuleList([_build(entry, folder) for entry in entries[1:]])
        file = folder / TRANSFORMER_CONFIG
        config = _read_json(file) if file.is_file() else {}
        length = int(config["max_seq_length"]) if config.get("max_seq_length") else None
        lower = bool(config.get("do_lower_case", False))
        return cls(head.float().eval(), _default_prompt(folder), None, length, lower, str(folder))

    def describe(self) -> str:
        """``Pooling(mean) -> Normalize``, with the default prompt when there is one."""
        text = " -> ".join(m.describe() for m in self.head) or "last hidden state"
        return text + (f"; default prompt {self.prompt!r}" if self.prompt else "")

    def text(self, text: str) -> str:
        """``text`` as the Transformer module tokenizes it: after the default prompt, lowercased if configured."""
        text = (self.prompt or "") + text
        return text.lower() if self.lower_case else text

    def with_tokenizer(self, tokenizer: Any) -> SentencePipeline:
        """A copy that knows how many tokens the default prompt takes (needed when pooling excludes it)."""
        if not self.prompt or tokenizer is None:
            return self
        ids = tokenizer(self.text(""))["input_ids"]
        trailing = bool(ids) and ids[-1] in set(getattr(tokenizer, "all_special_ids", []))
        return replace(self, prompt_length=len(ids) - int(trailing))

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor, prompt_length: int | None = None) -> torch.Tensor:
        """The sentence embedding of a batch from its last hidden state (computed in float32)."""
        if self._device != hidden.device:
            self.head.to(hidden.device)
            self._device = hidden.device
        features: Features = {"token_embeddings": hidden.float(), "attention_mask": mask.to(hidden.device)}
        if prompt_length or self.prompt_length:
            features["prompt_length"] = prompt_length or self.prompt_length
        for module in self.head:
            features = module(features)
        if "sentence_embedding" not in features:
            raise EmbcompressError(f"the sentence-transformers modules of '{self.folder}' give no sentence embedding")
        return features["sentence_embedding"]


def _default_prompt(folder: Path) -> str | None:
    file = folder / SETTINGS_NAME
    settings = _read_json(file) if file.is_file() else {}
    name = settings.get("default_prompt_name")
    if not name:
        return None
    return (settings.get("prompts") or {}).get(name) or None


def load_pipeline(folder: Path | None) -> SentencePipeline | None:
    """:meth:`SentencePipeline.from_folder`, or ``None`` with one logged line when a module is unsupported."""
    if folder is None or not Path(folder).is_dir():
        return None
    try:
        return SentencePipeline.from_folder(Path(folder))
    except UnsupportedPipeline as exc:
        logger.warning(
            "sentence-transformers pipeline of '%s' not evaluated (%s): sentence embeddings are measured as the "
            "mean-pooled last hidden state",
            folder,
            exc,
        )
        return None


def attach_pipeline(model: nn.Module, pipeline: SentencePipeline | None) -> nn.Module:
    """Keep ``pipeline`` with ``model`` (a plain attribute: not a sub-module, never saved as weights)."""
    if pipeline is not None:
        object.__setattr__(model, PIPELINE_ATTR, pipeline)
    return model


def pipeline_of(model: nn.Module | None) -> SentencePipeline | None:
    """The pipeline attached to ``model`` (or to the model it wraps), if any."""
    for candidate in (model, getattr(model, "module", None)):
        pipeline = getattr(candidate, PIPELINE_ATTR, None) if candidate is not None else None
        if isinstance(pipeline, SentencePipeline):
            return pipeline
    return None


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over attended positions."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def sentence_embedding(pipeline: SentencePipeline | None, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pipeline's sentence embedding, or the mean-pooled hidden state of a bare encoder (not normalised)."""
    return mean_pool(hidden, mask) if pipeline is None else pipeline.embed(hidden, mask)


def describe(pipeline: SentencePipeline | None) -> str:
    """How sentence embeddings are computed, in a few words."""
    return "mean-pooled last hidden state" if pipeline is None else f"sentence-transformers: {pipeline.describe()}"


@torch.no_grad()
def encode(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    batch_size: int = 32,
    pipeline: SentencePipeline | None = None,
) -> torch.Tensor:
    """Sentence embeddings (float32, CPU) of ``texts`` as ``SentenceTransformer.encode`` computes them: the
    default prompt prepended, truncated to ``max_seq_length`` (else the tokenizer's and the model's limit),
    through ``pipeline`` (default: the one attached to ``model``; mean pooling without one)."""
    pipeline = pipeline or pipeline_of(model)
    if pipeline is not None:
        pipeline = pipeline.with_tokenizer(tokenizer)
        texts = [pipeline.text(text) for text in texts]
    limit = pipeline.max_seq_length if pipeline is not None else None
    positions = getattr(model.config, "max_position_embeddings", None)
    limit = limit or min(int(getattr(tokenizer, "model_max_length", 0) or 10**9), positions or 10**9)
    device = next(model.parameters()).device
    parts = []
    for first in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[first : first + batch_size], padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = model(**inputs).last_hidden_state
        parts.append(sentence_embedding(pipeline, hidden, inputs["attention_mask"]).float().cpu())
    return torch.cat(parts)
