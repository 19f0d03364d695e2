"""Find a model's embedding matrices by identity and swap in factorized modules.

Both paths that produce a factorized model go through :func:`install_modules`: the in-memory
path (``compress_model``) fills the modules with fitted factors, the loading path
(``from_pretrained`` via the registered quantizer) builds them empty on the meta device and lets
transformers load the factors by name.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .config import CompressionConfig, ModuleSpec
from .errors import EmbcompressError
from .methods import get_method
from .modules import CompressedEmbedding, FactorizedLinear

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingTargets:
    """The embedding matrices of a model, found by module identity."""

    input_path: str
    input_module: nn.Embedding
    input_aliases: list[str]
    output_path: str | None
    output_module: nn.Module | None
    tied: bool

    @property
    def vocab_size(self) -> int:
        return self.input_module.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.input_module.weight.shape[1]


def _paths_of(model: nn.Module, module: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules(remove_duplicate=False) if mod is module]


def _get_embeddings(model: nn.Module, getter: str) -> nn.Module | None:
    try:
        return getattr(model, getter)()
    except (NotImplementedError, AttributeError):
        return None


def find_targets(model: nn.Module) -> EmbeddingTargets:
    """Locate the input embedding (and its aliases) and the output embedding of ``model``."""
    inp = _get_embeddings(model, "get_input_embeddings")
    if isinstance(inp, CompressedEmbedding):
        raise EmbcompressError(f"{type(model).__name__} is already compressed by embcompress")
    if not isinstance(inp, nn.Embedding):
        raise EmbcompressError(
            f"{type(model).__name__} has no token embedding (get_input_embeddings() returned "
            f"{type(inp).__name__}); embcompress needs a model with an nn.Embedding input embedding"
        )
    paths = _paths_of(model, inp)
    aliases = paths[1:] + [
        name
        for name, mod in model.named_modules(remove_duplicate=False)
        if isinstance(mod, nn.Embedding) and mod is not inp and mod.weight is inp.weight
    ]
    out = _get_embeddings(model, "get_output_embeddings")
    out_ok = isinstance(out, nn.Linear) and tuple(out.weight.shape) == tuple(inp.weight.shape)
    if out is not None and not out_ok:
        logger.warning("output embedding %s does not match the input embedding; left dense", type(out).__name__)
        out = None
    out_path = _paths_of(model, out)[0] if out is not None else None
    tied = out is not None and out.weight is inp.weight
    return EmbeddingTargets(paths[0], inp, aliases, out_path, out, tied)


def swap_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` with ``new``."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def retie(model: nn.Module, config: CompressionConfig, modules: dict[str, nn.Module]) -> None:
    """Rewrite the model's tied-weights map so transformers ties the factors, not ``.weight``.

    Entries touching a replaced module's dense ``weight`` are dropped; alias paths and tied heads
    map each factor parameter onto the owning embedding's parameter.
    """
    dense_weights = {f"{p}.weight" for spec in config.modules for p in (spec.path, *spec.aliases)}
    old = getattr(model, "all_tied_weights_keys", {}) or {}
    mapping = {t: s for t, s in old.items() if t not in dense_weights and s not in dense_weights}
    for spec in config.modules:
        if spec.role == "input":
            names = [n for n, _ in modules[spec.path].named_parameters()]
            mapping.update({f"{a}.{n}": f"{spec.path}.{n}" for a in spec.aliases for n in names})
        elif spec.tied_to is not None:
            names = [n for n, _ in modules[spec.tied_to].named_parameters()]
            mapping.update({f"{spec.path}.source.{n}": f"{spec.tied_to}.{n}" for n in names})
    model.all_tied_weights_keys = mapping
    model._tied_weights_keys = dict(mapping)


def build_modules(
    config: CompressionConfig, compute_dtype: torch.dtype, device: torch.device | str | None = None
) -> dict[str, nn.Module]:
    """Create empty factorized modules for every spec (tied heads share their source)."""
    modules: dict[str, nn.Module] = {}
    for spec in sorted(config.modules, key=lambda s: s.role != "input"):
        cls = get_method(spec.method).module_class
        source = modules[spec.tied_to] if spec.tied_to else cls.from_spec(spec, compute_dtype, device)
        bias = nn.Parameter(torch.zeros(spec.num_embeddings, device=device)) if spec.bias else None
        modules[spec.path] = source if spec.role == "input" else FactorizedLinear.from_source(source, bias)
    return modules


def install_modules(model: nn.Module, config: CompressionConfig, modules: dict[str, nn.Module]) -> None:
    """Swap ``modules`` into ``model`` at their spec paths and aliases, then re-tie.

    Each swapped module moves to the end of its parent's children: the input embedding is usually a
    model's first parameter, and code that reads the model's dtype from its first parameter
    (``SentenceTransformer`` casts its Dense modules to it, transformers' ``model.dtype``) must see a
    compute-dtype weight, not a float16 or int8 factor. Only iteration order changes, never a name.
    """
    for spec in config.modules:
        for path in (spec.path, *spec.aliases):
            swap_module(model, path, modules[spec.path])
            parent_path, _, name = path.rpartition(".")
            children = (model.get_submodule(parent_path) if parent_path else model)._modules
            children[name] = children.pop(name)
    retie(model, config, modules)


def resolve_paths(model: nn.Module, config: CompressionConfig) -> CompressionConfig:
    """Adapt spec paths saved from a bare model (``embeddings.x``) to a model with a head (``bert.embeddings.x``)."""
    names = {n for n, _ in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "")

    def fix(path: str) -> str:
        for candidate in (path, f"{prefix}.{path}", path.removeprefix(f"{prefix}.")) if prefix else (path,):
            if candidate in names:
                return candidate
        raise EmbcompressError(f"module '{path}' from the checkpoint config is not in {type(model).__name__}")

    for spec in config.modules:
        spec.path = fix(spec.path)
        spec.aliases = [fix(a) for a in spec.aliases]
        spec.tied_to = fix(spec.tied_to) if spec.tied_to else None
    return config


class ScaledEmbedding(nn.Embedding):
    """``nn.Embedding`` times a constant, as scaled-embedding architectures (Bart, Gemma...) apply it
    in their own embedding class; a reloaded dense checkpoint gets that class back from transformers."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


def _dense_embedding(spec: ModuleSpec, weight: nn.Parameter) -> nn.Embedding:
    if spec.embed_scale is not None:
        emb: nn.Embedding = ScaledEmbedding(spec.num_embeddings, spec.embedding_dim, spec.padding_idx, spec.embed_scale)
    else:
        emb = nn.Embedding(spec.num_embeddings, spec.embedding_dim, padding_idx=spec.padding_idx)
    emb.weight = weight
    return emb


def densify(model: nn.Module) -> nn.Module:
    """Return a copy of a compressed model with the factors multiplied out into dense modules."""
    dense = copy.deepcopy(model)
    qc = getattr(dense.config, "quantization_config", None)
    config = qc.compression if hasattr(qc, "compression") else CompressionConfig.from_dict(qc)
    built: dict[str, nn.Module] = {}
    for spec in sorted(config.modules, key=lambda s: s.role != "input"):
        module = dense.get_submodule(spec.path)
        if isinstance(module, CompressedEmbedding):
            built[spec.path] = emb = _dense_embedding(spec, nn.Parameter(module.dense().detach().clone()))
            for path in (spec.path, *spec.aliases):
                swap_module(dense, path, emb)
        elif isinstance(module, FactorizedLinear):
            head = nn.Linear(spec.embedding_dim, spec.num_embeddings, bias=module.bias is not None)
            head.weight = built[spec.tied_to].weight if spec.tied_to else nn.Parameter(module.dense().detach().clone())
            if module.bias is not None:
                head.bias = module.bias
            swap_module(dense, spec.path, head)
    del dense.config.quantization_config
    dense.is_quantized = False
    for attr in ("hf_quantizer", "quantization_method", "_tied_weights_keys"):
        dense.__dict__.pop(attr, None)
    dense.all_tied_weights_keys = dense.get_expanded_tied_weights_keys(all_submodels=True)
    return dense
