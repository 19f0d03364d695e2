"""Configuration of a distillation run (dataclasses, serialised into the output summary)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import EmbcompressError
from ..kinds import ModelKind
from ..options import Options, require

TRAIN_MODES = ("factors", "factors+norms", "all")
HIDDEN_LOSSES = ("cosine", "mse")


@dataclass
class LossWeights(Options):
    """Weights of the loss terms; ``None`` means "the default for the model kind" (validated >= 0).

    Attributes:
        kl: KL(teacher || student) on temperature-scaled logits (causal and masked LMs).
        hidden: Hidden-state distance on ``DistillConfig.hidden_layers``.
        pooled: ``1 - cos`` between sentence embeddings: the teacher's sentence-transformers pipeline
            (pooling, Dense, Normalize) when it has one, else the mean-pooled last hidden state.
        recon: Distilled-Embedding reconstruction: relative squared error of the factorized rows
            against the teacher's dense embedding rows.
        lm: Plain language-model cross entropy on the data (next token / masked token).
    """

    kl: float | None = None
    hidden: float | None = None
    pooled: float | None = None
    recon: float | None = None
    lm: float | None = None

    def resolved(self, kind: ModelKind) -> dict[str, float]:
        """Concrete weights for ``kind`` with defaults filled in."""
        defaults = DEFAULT_WEIGHTS[kind]
        return {name: float(v if v is not None else defaults[name]) for name, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        weights = dataclasses.asdict(self)
        if any(v is not None and v < 0 for v in weights.values()):
            raise EmbcompressError(f"loss weights must be >= 0, got {weights}")


#: Default loss weights per model kind. Encoders have no logits: hidden + pooled are the signal.
DEFAULT_WEIGHTS: dict[ModelKind, dict[str, float]] = {
    ModelKind.CAUSAL_LM: {"kl": 1.0, "hidden": 0.0, "pooled": 0.0, "recon": 0.0, "lm": 0.0},
    ModelKind.MASKED_LM: {"kl": 1.0, "hidden": 0.0, "pooled": 0.0, "recon": 0.0, "lm": 0.0},
    ModelKind.ENCODER: {"kl": 0.0, "hidden": 1.0, "pooled": 1.0, "recon": 0.0, "lm": 0.0},
}


@dataclass
class DistillConfig(Options):
    """Everything that determines a distillation run (budgets, optimiser, losses, data, eval).

    Values are validated at construction (:meth:`validate`); data and model checks run later.

    Attributes:
        steps / max_tokens / max_minutes: Budgets; the run stops at the first one reached. With
            none given, ``max_minutes`` defaults to 30. The learning-rate schedule follows the
            fraction of the tightest budget used.
        batch_size: Sequences per micro-batch (per process).
        grad_accum: Micro-batches per optimiser step.
        seq_len: Tokens per sequence (packed windows for LMs, per-document for encoders).
        lr / weight_decay / warmup / min_lr_ratio / max_grad_norm: AdamW with linear warmup over
            ``warmup`` of the budget, then cosine decay to ``min_lr_ratio * lr``.
        train: ``factors`` | ``factors+norms`` | ``all``.
        temperature: Softmax temperature of the KL term (scaled by T^2).
        hidden_layers: Indices into ``hidden_states`` for the hidden term (-1 = last layer).
        hidden_loss: ``cosine`` or ``mse``.
        mlm_probability: Share of positions replaced by the mask token for masked LMs (both models
            see the same masked input; the KL is taken on all positions).
        eval_every / eval_windows / patience: Held-out evaluation cadence, size, and early stopping
            after ``patience`` evaluations without improvement (0 disables early stopping).
        checkpoint_every: Steps between training checkpoints (atomic; also written on Ctrl-C).
        heldout_fraction: Share of documents in the held-out split (deterministic hash split).
        data_free: Sample training text from the teacher (causal) / the token prior (encoders).
        sample_temperature / sample_top_p: Sampling settings of data-free generation.
        cache_top_k: Top-k teacher logits kept per position when caching the teacher.
        seed: Seeds data shuffling, masking and sampling (every step derives its own generator).
    """

    steps: int | None = None
    max_tokens: int | None = None
    max_minutes: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: float = 0.03
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    train: str = "factors"
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 2.0
    hidden_layers: tuple[int, ...] = (-1,)
    hidden_loss: str = "cosine"
    mlm_probability: float = 0.15
    eval_every: int = 50
    eval_windows: int = 32
    patience: int = 5
    checkpoint_every: int = 100
    heldout_fraction: float = 0.05
    data_free: bool = False
    sample_temperature: float = 1.0
    sample_top_p: float = 0.95
    cache_top_k: int = 64
    shuffle_buffer: int = 256
    text_field: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "hidden_layers": list(self.hidden_layers)}

    def with_default_budget(self) -> DistillConfig:
        """A copy with ``max_minutes=30`` when no budget was given."""
        if self.steps is None and self.max_tokens is None and self.max_minutes is None:
            return dataclasses.replace(self, max_minutes=30.0)
        return self

    def for_data(self, data: object) -> DistillConfig:
        """The settings a run on ``data`` uses (a copy): the default budget, ``data_free`` when ``data`` is None."""
        return dataclasses.replace(self.with_default_budget(), data_free=data is None)

    def validate(self) -> None:
        """One-line errors for impossible values (run at construction, before anything is loaded)."""
        self.hidden_layers = tuple(self.hidden_layers)
        self.require_positive("steps", "max_tokens", optional=True)
        require(
            self.max_minutes is None or self.max_minutes > 0, "max_minutes", f"must be positive, got {self.max_minutes}"
        )
        self.require_positive("batch_size", "grad_accum", "seq_len", "eval_every", "eval_windows", "checkpoint_every")
        require(self.seq_len >= 4, "seq_len", f"must be at least 4, got {self.seq_len}")
        require(self.train in TRAIN_MODES, "train", f"must be one of {', '.join(TRAIN_MODES)}, got '{self.train}'")
        require(
            self.hidden_loss in HIDDEN_LOSSES,
            "hidden_loss",
            f"must be one of {', '.join(HIDDEN_LOSSES)}, got '{self.hidden_loss}'",
        )
        if self.lr <= 0 or self.temperature <= 0:
            raise EmbcompressError("--lr and --temperature must be positive")
        self.require_fraction("heldout_fraction")
        require(self.cache_top_k > 0, "cache_top_k", f"must be positive, got {self.cache_top_k}")
        if isinstance(self.weights, dict):
            self.weights = LossWeights.from_dict(self.weights)
