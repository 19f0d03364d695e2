"""Short distillation runs on the real checkpoints (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

import embcompress
from embcompress.distill import DistillConfig, distill_checkpoint
from embcompress.factorize import FactorizeOptions, factorize_checkpoint
from embcompress.sources import LoadOptions
from helpers.models import PYDOCS, requires_minilm, requires_pydocs, requires_smollm2

pytestmark = [pytest.mark.slow, requires_pydocs]


@requires_minilm
def test_minilm_r64_pooled_cosine_improves_in_a_few_steps(tmp_path: Path) -> None:
    factorize_checkpoint("minilm", tmp_path / "s", FactorizeOptions(rank=64), LoadOptions())
    cfg = DistillConfig(steps=12, batch_size=8, seq_len=64, eval_every=6, eval_windows=32)
    result = distill_checkpoint(tmp_path / "s", "minilm", tmp_path / "o", cfg, data=PYDOCS / "tutorial")
    assert result.kind == "encoder" and result.eval_split == "heldout"
    assert result.after["cosine"] > result.before["cosine"] + 0.05
    model = embcompress.load(tmp_path / "o")
    assert type(model).__name__ == "BertModel" and (tmp_path / "o" / "1_Pooling").is_dir()


@requires_smollm2
def test_smollm2_r128_kl_drops_after_a_few_factor_steps(tmp_path: Path) -> None:
    factorize_checkpoint("smollm2", tmp_path / "s", FactorizeOptions(rank=128), LoadOptions())
    cfg = DistillConfig(steps=3, batch_size=2, seq_len=64, eval_every=3, eval_windows=4)
    result = distill_checkpoint(tmp_path / "s", "smollm2", tmp_path / "o", cfg, data=PYDOCS / "tutorial")
    assert result.after["kl"] < result.before["kl"]
    assert result.after["ppl_ratio"] < result.before["ppl_ratio"]
    assert embcompress.load(tmp_path / "o").config.tie_word_embeddings
