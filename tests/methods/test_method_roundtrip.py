"""Every method through the real pipeline: fit -> save -> from_pretrained / embcompress.load -> same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import embcompress
from embcompress.checkpoint import WEIGHTS_NAME, save_model_files
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.methods import get_method, method_names
from embcompress.modules import CompressedEmbedding, FactorizedLinear
from helpers.methods import METHOD_OPTIONS, budget, compact_dtype, single_thread, weights_for
from helpers.models import forward_logits, make_tiny

RANK = 4


_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _compress(name: str, method: str, factor_dtype: str = "float32", rank: int = RANK) -> torch.nn.Module:
    model = make_tiny(name)
    dtype = compact_dtype(method) if factor_dtype == "compact" else factor_dtype
    options = FactorizeOptions(
        method=method, factor_dtype=dtype, method_options=METHOD_OPTIONS[method], **budget(method, rank)
    )
    factorize_model(model, options, row_weights=weights_for(method))
    return model


def _assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    # Same stored tensors; only BLAS kernel choice (memory alignment of loaded tensors) may differ by ULPs.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_all_methods_registered() -> None:
    assert {"svd", "weighted-svd", "grouped", "nmf", "nonlinear"} <= set(method_names())
    assert set(METHOD_OPTIONS) == set(method_names())


@pytest.mark.parametrize("factor_dtype", ["float32", "compact"])
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_save_reload_same_logits(method: str, factor_dtype: str, tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = _compress("llama-tied", method, factor_dtype)
    expected = forward_logits(model, tiny_ids)
    save_model_files(model, tmp_path)
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    for key, value in model.state_dict().items():
        if key in stored:
            assert torch.equal(stored[key], value.cpu()), key
    module_class = get_method(method).module_class
    for loaded in (
        embcompress.load(tmp_path),
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval(),
    ):
        emb = loaded.get_input_embeddings()
        assert type(emb) is module_class
        assert loaded.lm_head.source is emb, "tied head must stay tied after reload"
        if factor_dtype == "compact" and compact_dtype(method) == "int8":
            int8 = [n for n, p in emb.named_parameters() if p.dtype == torch.int8]
            assert int8 and all(f"{n}_scale" in dict(emb.named_parameters()) for n in int8)
        if factor_dtype == "compact" and compact_dtype(method) == "float16":
            dtypes = {p.dtype for p in emb.parameters()}
            assert dtypes == {torch.uint8, torch.float16}, dtypes
        _assert_same_logits(forward_logits(loaded, tiny_ids), expected)


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_untied_head_gets_own_factors(method: str, tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = _compress("llama-untied", method)
    assert isinstance(model.lm_head, FactorizedLinear)
    assert model.lm_head.source is not model.get_input_embeddings()
    expected = forward_logits(model, tiny_ids)
    save_model_files(model, tmp_path)
    _assert_same_logits(forward_logits(embcompress.load(tmp_path), tiny_ids), expected)


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_tied_stays_tied(method: str) -> None:
    model = _compress("llama-tied", method)
    emb = model.get_input_embeddings()
    assert isinstance(emb, CompressedEmbedding)
    assert model.lm_head.source is emb
    head_ids = {id(p) for p in model.lm_head.parameters()}
    assert head_ids <= {id(p) for p in emb.parameters()}


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_encoder_roundtrip(method: str, tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = _compress("bert-encoder", method)
    expected = forward_logits(model, tiny_ids)
    save_model_files(model, tmp_path)
    _assert_same_logits(forward_logits(embcompress.load(tmp_path), tiny_ids), expected)


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_densify_matches_factorized(method: str, tiny_ids: torch.Tensor) -> None:
    model = _compress("llama-tied", method)
    with embcompress.fast_kernels(False):  # exact float32; the int8 serving kernel is checked below
        _assert_same_logits(forward_logits(embcompress.densify(model), tiny_ids), forward_logits(model, tiny_ids))


@pytest.mark.parametrize(("method", "factor_dtype"), [("svd", "int8"), ("grouped", "int8"), ("transform", "float16")])
def test_fast_int8_head_matches_reference(method: str, factor_dtype: str, tiny_ids: torch.Tensor) -> None:
    """The int8 serving kernel computes the reference product up to bfloat16 rounding of activations/logits."""
    model = _compress("llama-tied", method, factor_dtype)
    with embcompress.fast_kernels(False):
        reference = forward_logits(model, tiny_ids)
    fast = forward_logits(model, tiny_ids)
    assert not torch.equal(fast, reference)  # the kernel did run
    scale = reference.abs().max()
    torch.testing.assert_close(fast, reference, rtol=0, atol=float(8e-3 * scale))
