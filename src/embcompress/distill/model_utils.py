"""What kind of model we distil, which parameters train, and forward helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EmbcompressError
from ..factorize import convert_factor_dtype
from ..modules import CompressedEmbedding, FactorizedLinear


def factorized_sources(model: nn.Module) -> list[tuple[str, CompressedEmbedding]]:
    """The factor-owning modules: (role, module) for the input embedding and an untied head."""
    found: list[tuple[str, CompressedEmbedding]] = []
    inp = model.get_input_embeddings()
    if isinstance(inp, CompressedEmbedding):
        found.append(("input", inp))
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, FactorizedLinear) and all(out.source is not m for _, m in found):
        found.append(("output", out.source))
    return found


def check_trainable_storage(model: nn.Module) -> None:
    """Refuse int8-stored factors: they are frozen integers and cannot take gradient steps."""
    for module in model.modules():
        if isinstance(module, CompressedEmbedding) and any(p.dtype == torch.int8 for p in module.parameters()):
            raise EmbcompressError(
                "the student stores its factors as int8, which cannot be trained; factorize with "
                "--factor-dtype float32 and distil (embcompress compress quantizes the factors after distilling)"
            )


def select_trainable(model: nn.Module, mode: str) -> list[str]:
    """Freeze everything except ``mode``'s parameters; return the trainable parameter names."""
    check_trainable_storage(model)
    if not factorized_sources(model):
        raise EmbcompressError("the student has no factorized embedding to train")
    chosen: set[int] = set()
    for module in model.modules():
        wanted = isinstance(module, CompressedEmbedding | FactorizedLinear)
        wanted |= mode == "factors+norms" and "norm" in type(module).__name__.lower()
        if wanted or mode == "all":
            chosen.update(id(p) for p in module.parameters(recurse=False) if p.is_floating_point())
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return [name for name, param in model.named_parameters() if id(param) in chosen]


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, one per learning-rate scale: the ``lr_scale`` of the
    compressed embedding that owns a parameter (a factorized head's bias takes its source's), else 1."""
    scales: dict[int, float] = {}
    for module in model.modules():
        owner = module.source if isinstance(module, FactorizedLinear) else module
        if isinstance(owner, CompressedEmbedding):
            scales.update((id(p), owner.lr_scale) for p in module.parameters(recurse=False))
    groups: dict[float, list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(scales.get(id(param), 1.0), []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


@contextlib.contextmanager
def float32_factors(model: nn.Module) -> Iterator[None]:
    """Hold half-precision factors as float32 while training, and store them back in their dtype after.

    AdamW's second moments and its ``eps`` (1e-8) underflow in float16: a ``factorize --method transform``
    student (float16 factors) reached a NaN loss at the second step. The embedding modules are replaced
    twice (see :func:`~embcompress.factorize.convert_factor_dtype`): hold the model, not its modules.
    """
    half = sorted({module.spec.factor_dtype for _, module in factorized_sources(model)} & {"float16", "bfloat16"})
    if half:
        convert_factor_dtype(model, "float32")
    try:
        yield
    finally:
        if half:
            convert_factor_dtype(model, half[0])


def freeze(model: nn.Module) -> nn.Module:
    """Teacher: eval mode, no parameter requires grad."""
    return model.requires_grad_(False).eval()


def max_positions(model: nn.Module) -> int | None:
    return config_positions(model.config)


def config_positions(config: Any) -> int | None:
    """The position limit a model config declares (``None``: none)."""
    limits = (getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_seq_len"))
    return next((n for n in limits if isinstance(n, int) and n > 0), None)


@dataclass
class Outputs:
    """What the losses need from one forward pass."""

    logits: torch.Tensor | None
    hidden: list[torch.Tensor]
    last_hidden: torch.Tensor | None
    #: The LM head's input, when the logits are left to :func:`head_logits` (see :class:`HeadSplit`).
    head_input: torch.Tensor | None = None


#: A batch whose float32 logits exceed this many bytes is distilled through :class:`HeadSplit`: a causal LM
#: with a 262k vocabulary has 1 MB of logits per token, 1 GB per batch of 8 x 128 for each of the two models.
LOGITS_BYTES = 128 * 2**20


@dataclass
class HeadSplit:
    """A causal LM whose logits are ``head(base(...).last_hidden_state)`` (optionally soft-capped, as Gemma
    does): the losses then compute logits a chunk of positions at a time."""

    base: nn.Module
    head: nn.Module
    softcap: float | None


def head_split(model: nn.Module, kind: str) -> HeadSplit | None:
    """:class:`HeadSplit` of a causal LM with a separate base model and output embedding (else ``None``)."""
    prefix = getattr(model, "base_model_prefix", "")
    base, head = getattr(model, prefix, None) if prefix else None, model.get_output_embeddings()
    if kind != "causal-lm" or not isinstance(base, nn.Module) or base is model or head is None:
        return None
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return HeadSplit(base, head, float(softcap) if softcap else None)


def head_logits(split: HeadSplit, hidden: torch.Tensor) -> torch.Tensor:
    """The logits the model would compute from its head's input ``hidden``."""
    logits = split.head(hidden)
    if split.softcap is not None:
        logits = torch.tanh(logits / split.softcap) * split.softcap
    return logits


def forward_split(
    split: HeadSplit, ids: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...], want_hidden: bool
) -> Outputs:
    """:func:`forward` without the LM head: ``head_input`` instead of ``logits``."""
    out: Any = split.base(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
    states = out.hidden_states if want_hidden else None
    hidden = [states[i] for i in layers] if states is not None else []
    return Outputs(None, hidden, out.last_hidden_state, head_input=out.last_hidden_state)


def forward(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, kind: str, layers: tuple[int, ...], want_hidden: bool
) -> Outputs:
    """Run ``model`` and pick logits, the chosen hidden layers and the last hidden state."""
    out: Any = model(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
    states = out.hidden_states if want_hidden else None
    hidden = [states[i] for i in layers] if states is not None else []
    last = getattr(out, "last_hidden_state", None)
    if last is None and states is not None:
        last = states[-1]
    return Outputs(getattr(out, "logits", None) if kind != "encoder" else None, hidden, last)
