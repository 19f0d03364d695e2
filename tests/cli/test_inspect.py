"""``embcompress inspect``: JSON fields cross-checked against independent computations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from embcompress.cli import app
from helpers.models import HIDDEN, VOCAB, make_tiny


def svd_energy(matrix: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.svdvals(matrix.double())
    return s.pow(2).cumsum(0) / s.pow(2).sum()


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "t5"])
def test_inspect_json_matches_independent_computation(name: str, tiny_model_dir: Callable[[str], Path]) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tiny_model_dir(name)), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    model = make_tiny(name)
    weight = model.get_input_embeddings().weight.detach()
    total = sum(p.numel() for p in model.parameters())
    tied = name != "llama-untied"
    matrices = 1 if tied else 2

    assert info["architecture"] == type(model).__name__ and info["compressed"] is False
    assert info["input"]["shape"] == [VOCAB, HIDDEN]
    assert info["output"]["tied"] is tied
    assert info["params_total"] == total
    assert info["embedding_params"] == matrices * VOCAB * HIDDEN
    assert info["embedding_share"] == pytest.approx(matrices * VOCAB * HIDDEN / total)
    be = info["break_even_rank"]
    assert be * (VOCAB + HIDDEN) < VOCAB * HIDDEN <= (be + 1) * (VOCAB + HIDDEN)
    spectrum = info["input"]["spectrum"]
    assert spectrum["top_singular_values"] == pytest.approx(torch.linalg.svdvals(weight)[:5].tolist(), abs=1e-3)
    energy = svd_energy(weight)
    assert spectrum["energy_at_rank"]["16"] == pytest.approx(float(energy[15]), abs=1e-4)
    for target, rank in spectrum["rank_for_energy"].items():
        assert energy[rank - 1] >= float(target) - 1e-6
        assert rank == 1 or energy[rank - 2] < float(target)
    if name == "t5":
        assert sorted(info["input"]["aliases"]) == ["decoder.embed_tokens", "encoder.embed_tokens"]
    if not tied:
        head = model.get_output_embeddings().weight.detach()
        assert info["output"]["spectrum"]["top_singular_values"] == pytest.approx(
            torch.linalg.svdvals(head)[:5].tolist(), abs=1e-3
        )


def test_inspect_table_output(tiny_model_dir: Callable[[str], Path]) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tiny_model_dir("llama-tied")), "--no-spectrum"])
    assert result.exit_code == 0, result.output
    assert "break-even rank" in result.stdout and "13" in result.stdout
    assert "(tied)" in result.stdout


def test_inspect_compressed_checkpoint(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = CliRunner()
    assert (
        runner.invoke(app, ["factorize", str(tiny_model_dir("llama-tied")), "-o", str(out), "-r", "4"]).exit_code == 0
    )
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["compressed"] is True
    assert info["params_total"] == sum(p.numel() for p in make_tiny("llama-tied").parameters()) - VOCAB * HIDDEN + 4 * (
        VOCAB + HIDDEN
    )


def test_inspect_missing_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "missing"), "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: model path '{tmp_path / 'missing'}' does not exist; pass a model folder, a hub id, or an alias "
        "(minilm, smollm2, gemma3)"
    ]


def test_threads_option_sets_torch_threads_and_refuses_zero() -> None:
    import torch
    from typer.testing import CliRunner

    from embcompress.cli import app

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["--threads", "1", "inspect", "--help"])
        assert result.exit_code == 0 and torch.get_num_threads() == 1
        result = CliRunner().invoke(app, ["--threads", "0", "inspect", "--help"])
        assert result.exit_code != 0 and "must be a positive integer, got 0" in result.stderr
    finally:
        torch.set_num_threads(before)
