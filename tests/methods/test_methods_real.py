"""Methods on the real checkpoints (slow): MiniLM through the CLI, SmolLM2 int8 factor sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import embcompress
from embcompress.cli import app
from embcompress.factorize import FactorizeOptions, factorize_model, relative_error
from embcompress.frequency import FrequencyOptions, token_frequencies
from embcompress.sources import load_model, load_tokenizer, resolve_source
from helpers.methods import single_thread
from helpers.models import PYDOCS, requires_minilm, requires_pydocs, requires_smollm2

pytestmark = pytest.mark.slow
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

DOC = PYDOCS / "tutorial" / "introduction.rst.txt"


@requires_minilm
@requires_pydocs
def test_minilm_frequency_methods_beat_svd_on_weighted_error() -> None:
    source = resolve_source("minilm")
    model = load_model(source, torch.float32, "cpu", False)
    matrix = model.get_input_embeddings().weight.detach().clone()
    freqs = token_frequencies(load_tokenizer(source), FrequencyOptions(str(DOC)), matrix.shape[0])
    errors = {}
    for method, options in (("svd", {}), ("weighted-svd", {}), ("grouped", {"buckets": [2000, "rest"]})):
        copy = load_model(source, torch.float32, "cpu", False)
        weights = None if method == "svd" else freqs.weights
        factorize_model(copy, FactorizeOptions(method, rank=32, method_options=options), row_weights=weights)
        errors[method] = relative_error(matrix, copy.get_input_embeddings(), freqs.weights)
    assert errors["weighted-svd"] < errors["svd"]
    assert errors["grouped"] < errors["svd"]


@requires_minilm
@requires_pydocs
def test_minilm_grouped_ratio_through_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["factorize", "minilm", "-o", str(out), "--method", "grouped", "--freq-data", str(DOC)]
    result = CliRunner().invoke(app, [*args, "--ratio", "6", "--factor-dtype", "int8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["budget"]["mode"] == "ratio" and data["modules"][0]["ratio"] >= 6
    assert type(embcompress.load(out).get_input_embeddings()).__name__ == "GroupedEmbedding"


@requires_smollm2
def test_smollm2_rank128_int8_factors_size() -> None:
    model = load_model(resolve_source("smollm2"), torch.float32, "cpu", False)
    result = factorize_model(model, FactorizeOptions(rank=128, factor_dtype="int8"))
    owner = next(m for m in result.modules if not m.tied_to)
    # codes 49152 x 128 int8 + basis 128 x 576 int8 + one float32 scale per row of each
    expected = 49152 * 128 + 128 * 576 + 4 * (49152 + 128)
    assert owner.bytes_after == expected
    assert 6.3e6 < owner.bytes_after < 6.6e6
    assert model.lm_head.source is model.get_input_embeddings()
