"""The kinds of model embcompress measures and distils, told apart by class name only."""

from __future__ import annotations

from enum import Enum

from torch import nn

from .errors import EmbcompressError


class ModelKind(str, Enum):
    """What a model computes from its embeddings (the values appear in reports and summaries)."""

    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    ENCODER = "encoder"

    def __str__(self) -> str:
        return self.value


def detect_kind(model: nn.Module) -> ModelKind | None:
    """The kind of ``model``, or ``None`` for what embcompress does not evaluate (encoder-decoders, heads
    for classification...)."""
    return kind_of_class(type(model).__name__, getattr(model.config, "is_encoder_decoder", False))


def kind_of_class(name: str, is_encoder_decoder: bool = False) -> ModelKind | None:
    """:func:`detect_kind` from a model class name (and its config's ``is_encoder_decoder``), before loading."""
    if is_encoder_decoder:
        return None
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return ModelKind.CAUSAL_LM
    if name.endswith("ForMaskedLM"):
        return ModelKind.MASKED_LM
    if "For" not in name:
        return ModelKind.ENCODER
    return None


def model_kind(model: nn.Module, purpose: str = "distill") -> ModelKind:
    """:func:`detect_kind`, with an error naming what ``purpose`` supports when there is none."""
    kind = detect_kind(model)
    if kind is None:
        raise EmbcompressError(
            f"{purpose} supports causal LMs, masked LMs and bare encoders, not {type(model).__name__}"
        )
    return kind
