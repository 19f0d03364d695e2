"""Shared pytest fixtures (helpers live in the ``helpers`` package beside this file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers.models import VOCAB, make_tiny


@pytest.fixture
def tiny_ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(3, VOCAB, (2, 9))


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Callable[[str], Path]:
    """Factory: save a tiny model of the given architecture as a safetensors HF folder."""

    def build(name: str = "llama-tied") -> Path:
        folder = tmp_path / f"src-{name}"
        make_tiny(name).save_pretrained(folder)
        return folder

    return build
