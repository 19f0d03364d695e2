"""Knowledge distillation of a factorized student towards its dense teacher (``embcompress distill``)."""

from __future__ import annotations

from .config import DEFAULT_WEIGHTS, DistillConfig, LossWeights
from .pipeline import distill_checkpoint, distill_model
from .trainer import DistillDiverged, Distiller, DistillInterrupted, DistillResult, make_accelerator

__all__ = [
    "DEFAULT_WEIGHTS",
    "DistillConfig",
    "DistillDiverged",
    "DistillInterrupted",
    "DistillResult",
    "Distiller",
    "LossWeights",
    "distill_checkpoint",
    "distill_model",
    "make_accelerator",
]
