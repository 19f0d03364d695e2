"""The CUDA path: fit and serve on a GPU, equal to the CPU result. Skipped cleanly without a GPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import embcompress
from embcompress import LoadOptions
from embcompress.distill import DistillConfig, distill_checkpoint
from embcompress.factorize import FactorizeOptions, factorize_model
from helpers.distill import build_pair, write_corpus
from helpers.methods import budget, weights_for
from helpers.models import VOCAB, forward_logits, make_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("method", ["svd", "transform", "nonlinear"])
def test_fit_on_cuda_matches_cpu(method: str) -> None:
    cpu = make_tiny("llama-tied")
    gpu = copy.deepcopy(cpu).to("cuda")
    options = FactorizeOptions(method=method, **budget(method, 8))
    factorize_model(cpu, options, row_weights=weights_for(method))
    factorize_model(gpu, options, row_weights=weights_for(method))
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    ids = torch.randint(0, VOCAB, (2, 12))
    with embcompress.fast_kernels(False):
        expected = forward_logits(cpu, ids)
    got = forward_logits(gpu, ids.to("cuda")).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_distill_on_cuda_improves_kl(tmp_path: Path) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied")
    config = DistillConfig(steps=20, eval_every=10, batch_size=4, seq_len=16, eval_windows=8, lr=1e-2)
    corpus = write_corpus(tmp_path / "corpus.txt")
    load = LoadOptions(device="cuda")
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", config, data=corpus, load=load)
    assert result.after["kl"] < result.before["kl"]
