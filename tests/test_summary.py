"""describe_model / spectrum summaries against independent computations."""

from __future__ import annotations

import pytest
import torch

from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.spectral import energy_curve, rank_for_energy
from embcompress.summary import describe_model, spectrum_summary
from helpers.models import HIDDEN, VOCAB, make_tiny


def reference_energy(matrix: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.svdvals(matrix.double())
    return s.pow(2).cumsum(0) / s.pow(2).sum()


def test_energy_curve_and_rank_for_energy() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    torch.testing.assert_close(energy_curve(s), torch.tensor([9 / 14, 13 / 14, 1.0, 1.0]))
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.99) == 3


def test_spectrum_summary_matches_svdvals() -> None:
    torch.manual_seed(0)
    matrix = torch.randn(200, 20) @ torch.diag(torch.linspace(3, 0.1, 20))
    info = spectrum_summary(matrix)
    s = torch.linalg.svdvals(matrix.double())
    assert info["top_singular_values"] == pytest.approx(s[:5].tolist(), abs=1e-3)
    curve = reference_energy(matrix)
    assert info["energy_at_rank"] == pytest.approx({"16": float(curve[15])}, abs=1e-4)
    for energy, rank in info["rank_for_energy"].items():
        assert curve[rank - 1] >= float(energy) - 1e-6
        assert rank == 1 or curve[rank - 2] < float(energy)


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-encoder"])
def test_describe_model(name: str) -> None:
    model = make_tiny(name)
    info = describe_model(model)
    total = sum(p.numel() for p in model.parameters())
    matrices = {"llama-tied": 1, "llama-untied": 2, "bert-encoder": 1}[name]
    assert info["input"]["shape"] == [VOCAB, HIDDEN]
    assert info["params_total"] == total
    assert info["embedding_params"] == matrices * VOCAB * HIDDEN
    assert info["embedding_share"] == pytest.approx(matrices * VOCAB * HIDDEN / total)
    assert info["break_even_rank"] == 13
    if name == "bert-encoder":
        assert info["output"] is None
    else:
        assert info["output"]["tied"] is (name == "llama-tied")
        assert ("spectrum" in info["output"]) is (name == "llama-untied")
    s = torch.linalg.svdvals(model.get_input_embeddings().weight.detach().double())
    assert info["input"]["spectrum"]["top_singular_values"] == pytest.approx(s[:5].tolist(), abs=1e-3)


def test_describe_compressed_model() -> None:
    model = make_tiny("llama-tied")
    factorize_model(model, FactorizeOptions(rank=4))
    info = describe_model(model)
    assert info["compressed"] is True
    assert info["params_total"] == sum(p.numel() for p in model.parameters())
