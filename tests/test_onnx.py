"""ONNX export with the embedding kept compressed (``embcompress.onnx_export``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import embcompress
from embcompress.errors import EmbcompressError
from embcompress.methods import get_method, method_names
from embcompress.onnx_export import export_model_onnx, onnx_session
from embcompress.surgery import densify
from helpers.models import make_tiny, requires_minilm, requires_pydocs
from helpers.models import pydocs_paragraphs as paragraphs

pytest.importorskip("onnxruntime")

# Options that keep each method's fit fast on a tiny model.
FAST_OPTIONS = {"nonlinear": {"steps": 2}}


def factorize(model: torch.nn.Module, method: str = "svd", factor_dtype: str = "int8", rank: int = 4) -> None:
    info = get_method(method)
    weights = torch.rand(model.get_input_embeddings().num_embeddings) + 0.1 if info.weights_use != "none" else None
    budget = {"ratio": 4.0} if info.byte_budget else {"rank": rank, "factor_dtype": factor_dtype}
    opts = embcompress.FactorizeOptions(method=method, method_options=FAST_OPTIONS.get(method, {}), **budget)
    embcompress.factorize_model(model, opts, row_weights=weights)


def run(path: Path, feeds: dict[str, torch.Tensor]) -> np.ndarray:
    return onnx_session(path).run(None, {k: v.numpy() for k, v in feeds.items()})[0]


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "gpt2", "bert-encoder", "bert-mlm", "distilbert-mlm"])
@pytest.mark.parametrize(("method", "factor_dtype"), [("svd", "int8"), ("grouped", "float32")])
def test_onnx_matches_pytorch_on_new_shapes(name: str, method: str, factor_dtype: str, tmp_path: Path) -> None:
    model = make_tiny(name)
    factorize(model, method, factor_dtype)
    result = export_model_onnx(model, tmp_path / "model.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    causal = "llama" in name or "gpt2" in name
    assert result.output == ("last_hidden_state" if name == "bert-encoder" else "logits")
    assert result.inputs[:2] == ["input_ids", "attention_mask"]
    assert ("token_type_ids" in result.inputs) == name.startswith("bert")
    # other batch and sequence sizes than the trace, padding in the middle row
    ids = torch.randint(3, 96, (3, 12))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if not causal:
        feeds["attention_mask"][1, 8:] = 0
    if "token_type_ids" in result.inputs:
        feeds["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad(), embcompress.fast_kernels(False):  # ONNX holds the reference kernels
        kwargs = {"use_cache": False} if causal else {}
        out = model(**feeds, **kwargs)
    expected = out.logits if result.output == "logits" else out.last_hidden_state
    np.testing.assert_allclose(run(tmp_path / "model.onnx", feeds), expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", method_names())
def test_every_registered_module_class_exports(method: str, tmp_path: Path) -> None:
    model = make_tiny("llama-untied")
    factorize(model, method, "float32" if method == "nonlinear" else "int8")
    assert isinstance(model.get_input_embeddings(), get_method(method).module_class)
    result = export_model_onnx(model, tmp_path / "model.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4, method
    # what the model stores (compressed factors as stored, the rest dense) plus small traced constants
    stored = {id(t): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    assert sum(result.initializers.values()) < 1.05 * sum(stored.values()) + 4096, method


def test_grouped_bucket_missing_from_trace_input_survives(tmp_path: Path) -> None:
    model = make_tiny("llama-tied")
    weights = torch.ones(96)
    weights[:48] = 10.0  # ids 0..47 are the frequent bucket
    opts = embcompress.FactorizeOptions(method="grouped", rank=4, method_options={"buckets": [48, "rest"]})
    embcompress.factorize_model(model, opts, row_weights=weights)
    export_model_onnx(model, tmp_path / "model.onnx")  # traced on random ids of both buckets
    for ids in (torch.arange(0, 40).reshape(2, 20), torch.arange(50, 90).reshape(2, 20)):
        with torch.no_grad(), embcompress.fast_kernels(False):  # ONNX holds the reference kernels
            expected = model(input_ids=ids, use_cache=False).logits.numpy()
        got = run(tmp_path / "model.onnx", {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def big_vocab_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def test_onnx_file_stays_compressed(tmp_path: Path) -> None:
    """No constant folding of the int8 factors back to fp32: the file is about the safetensors size."""
    model = big_vocab_llama()
    dense_result = export_model_onnx(model, tmp_path / "dense.onnx", check=False)
    factorize(model, "svd", "int8", rank=8)
    embcompress.write_checkpoint(model, tmp_path / "ckpt", _local_source(tmp_path), None, {"method": "svd"})
    st_bytes = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    result = export_model_onnx(model, tmp_path / "compressed.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert result.initializers.get("int8", 0) == 8192 * 8 + 8 * 64
    assert sum(result.initializers.values()) <= 1.05 * st_bytes
    assert result.file_bytes <= 1.05 * st_bytes + 100_000  # graph protos of the layers
    assert result.file_bytes < dense_result.file_bytes / 4


def _local_source(tmp_path: Path) -> embcompress.sources.ModelSource:
    return embcompress.sources.ModelSource("tiny", "local", None)


def test_greedy_decoding_agrees(tmp_path: Path) -> None:
    model = make_tiny("llama-tied")
    factorize(model, "grouped", "int8")
    export_model_onnx(model, tmp_path / "model.onnx")
    session = onnx_session(tmp_path / "model.onnx")
    torch_ids = onnx_ids = torch.tensor([[5, 17, 42]])
    for _ in range(5):
        with torch.no_grad(), embcompress.fast_kernels(False):  # ONNX holds the reference kernels
            logits = model(input_ids=torch_ids, use_cache=False).logits
        torch_ids = torch.cat([torch_ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        feeds = {"input_ids": onnx_ids.numpy(), "attention_mask": np.ones_like(onnx_ids.numpy())}
        onnx_logits = session.run(None, feeds)[0]
        onnx_ids = torch.cat([onnx_ids, torch.tensor(onnx_logits[:, -1].argmax(-1))[:, None]], dim=1)
    assert torch_ids.tolist() == onnx_ids.tolist()


def test_densified_model_exports_dense(tmp_path: Path) -> None:
    model = make_tiny("llama-tied")
    factorize(model)
    result = export_model_onnx(densify(model), tmp_path / "dense.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert "int8" not in result.initializers


def test_encoder_decoder_refused(tmp_path: Path) -> None:
    model = make_tiny("t5")
    factorize(model)
    with pytest.raises(EmbcompressError, match="encoder-decoder"):
        export_model_onnx(model, tmp_path / "model.onnx")


@pytest.mark.slow
@requires_minilm
@requires_pydocs
def test_minilm_onnx_sentence_embeddings_match(tmp_path: Path) -> None:
    _source, model, tokenizer = embcompress.load_source("minilm", embcompress.LoadOptions())
    factorize(model, "svd", "int8", rank=64)
    result = export_model_onnx(model, tmp_path / "model.onnx")
    session = onnx_session(tmp_path / "model.onnx")
    texts = paragraphs(50)
    cosines = []
    for start in range(0, len(texts), 10):
        batch = tokenizer(texts[start : start + 10], padding=True, truncation=True, max_length=128, return_tensors="pt")
        feeds = {name: batch[name] for name in result.inputs}
        with torch.no_grad(), embcompress.fast_kernels(False):  # ONNX holds the reference kernels
            ref = model(**feeds).last_hidden_state
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = [(h * mask).sum(1) / mask.sum(1) for h in (ref, got)]
        cosines += torch.nn.functional.cosine_similarity(*pooled).tolist()
    assert min(cosines) >= 0.9999
