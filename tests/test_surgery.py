"""Finding embeddings by identity, swapping modules and re-tying."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTModel

from embcompress.errors import EmbcompressError
from embcompress.factorize import FactorizeOptions, plan
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from embcompress.surgery import build_modules, find_targets, install_modules, resolve_paths, swap_module
from helpers.models import HIDDEN, TINY_MODELS, VOCAB, make_tiny

EXPECTED = {
    # name: (input path, output path, tied)
    "llama-tied": ("model.embed_tokens", "lm_head", True),
    "llama-untied": ("model.embed_tokens", "lm_head", False),
    "gemma3": ("model.embed_tokens", "lm_head", True),
    "bert-mlm": ("bert.embeddings.word_embeddings", "cls.predictions.decoder", True),
    "bert-encoder": ("embeddings.word_embeddings", None, False),
    "roberta-mlm": ("roberta.embeddings.word_embeddings", "lm_head.decoder", True),
    "distilbert-mlm": ("distilbert.embeddings.word_embeddings", "vocab_projector", True),
    "gpt2": ("transformer.wte", "lm_head", True),
    "t5": ("shared", "lm_head", True),
}


def test_expected_covers_every_tiny_model() -> None:
    assert set(EXPECTED) == set(TINY_MODELS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_find_targets(name: str) -> None:
    model = make_tiny(name)
    found = find_targets(model)
    input_path, output_path, tied = EXPECTED[name]
    assert (found.input_path, found.output_path, found.tied) == (input_path, output_path, tied)
    assert found.input_module is model.get_input_embeddings()
    assert (found.vocab_size, found.hidden_size) == (VOCAB, HIDDEN)


def test_t5_aliases_found_by_identity() -> None:
    found = find_targets(make_tiny("t5"))
    assert sorted(found.input_aliases) == ["decoder.embed_tokens", "encoder.embed_tokens"]


def test_no_token_embedding_is_refused() -> None:
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(EmbcompressError, match=r"ViTModel has no token embedding.*ViTPatchEmbeddings"):
        find_targets(vit)


def test_swap_module_replaces_nested_path() -> None:
    model = make_tiny("llama-tied")
    new = torch.nn.Identity()
    swap_module(model, "model.layers.0.mlp", new)
    assert model.model.layers[0].mlp is new


def test_install_modules_ties_factors_and_rewrites_tied_keys() -> None:
    model = make_tiny("t5")
    config, _ = plan(model, FactorizeOptions(rank=4))
    modules = build_modules(config, torch.float32)
    install_modules(model, config, modules)
    assert model.shared is model.encoder.embed_tokens is model.decoder.embed_tokens
    assert isinstance(model.lm_head, FactorizedLinear) and model.lm_head.source is model.shared
    tied = model.all_tied_weights_keys
    assert tied["lm_head.source.codes"] == "shared.codes"
    assert tied["encoder.embed_tokens.basis"] == "shared.basis"
    assert not any(k.endswith(".weight") for k in tied)


def test_untied_head_gets_its_own_module() -> None:
    model = make_tiny("llama-untied")
    config, _ = plan(model, FactorizeOptions(rank=4))
    modules = build_modules(config, torch.float32)
    assert isinstance(modules["lm_head"], FactorizedLinear)
    assert modules["lm_head"].source is not modules["model.embed_tokens"]


def test_resolve_paths_between_bare_and_headed_models() -> None:
    bare = make_tiny("bert-encoder")
    config, _ = plan(bare, FactorizeOptions(rank=4, targets=("input",)))
    headed = make_tiny("bert-mlm")
    assert resolve_paths(headed, config).modules[0].path == "bert.embeddings.word_embeddings"
    assert resolve_paths(bare, config).modules[0].path == "embeddings.word_embeddings"
    config.modules[0].path = "nowhere.embed"
    with pytest.raises(EmbcompressError, match=r"module 'nowhere\.embed' from the checkpoint config is not in"):
        resolve_paths(bare, config)


def test_already_compressed_is_refused() -> None:
    model = make_tiny("llama-tied")
    config, _ = plan(model, FactorizeOptions(rank=4))
    install_modules(model, config, build_modules(config, torch.float32))
    assert isinstance(model.get_input_embeddings(), FactorizedEmbedding)
    with pytest.raises(EmbcompressError, match="already compressed"):
        find_targets(model)
