"""Round trips through the real checkpoint writer: save -> from_pretrained / embcompress.load -> same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import embcompress
from embcompress.checkpoint import (
    WEIGHTS_NAME,
    atomic_output_dir,
    expected_factor_keys,
    read_compression_config,
    save_model_files,
)
from embcompress.errors import CheckpointError, EmbcompressError
from embcompress.factorize import CompressionResult, FactorizeOptions, factorize_model
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from embcompress.surgery import densify
from helpers.models import TINY_MODELS, VOCAB, forward_logits, make_tiny

RANK = 4
# T5Config forces tie_word_embeddings=True in transformers 5 (encoder/decoder/lm_head always share `shared`).
UNTIED_VARIANTS = ["bert-mlm", "roberta-mlm", "distilbert-mlm", "gpt2"]


def make_untied(name: str, seed: int = 0) -> nn.Module:
    """The tiny model ``name`` rebuilt with ``tie_word_embeddings=False``."""
    config = make_tiny(name).config
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    return type(make_tiny(name))(config).eval()


def build(name: str) -> nn.Module:
    """A tiny model by name; ``<arch>-untied`` names build the untied variant."""
    if name in TINY_MODELS:
        return make_tiny(name)
    return make_untied(name.removesuffix("-untied"))


ALL_VARIANTS = list(TINY_MODELS) + [f"{n}-untied" for n in UNTIED_VARIANTS]


def compress_and_save(model: nn.Module, folder: Path, **options: object) -> CompressionResult:
    """Factorize ``model`` in place (svd) and write it with the real checkpoint writer."""
    result = factorize_model(model, FactorizeOptions(rank=RANK, **options))  # type: ignore[arg-type]
    folder.mkdir(parents=True)
    save_model_files(model, folder)
    return result


def plain_load(model: nn.Module, folder: Path) -> nn.Module:
    """``<Class>.from_pretrained`` with the class of ``model`` (plain transformers entry point)."""
    return getattr(transformers, type(model).__name__).from_pretrained(str(folder)).eval()


def stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def factor_sources(model: nn.Module) -> list[FactorizedEmbedding]:
    """Distinct factor-owning modules of ``model``."""
    found: dict[int, FactorizedEmbedding] = {}
    for module in model.modules():
        source = module.source if isinstance(module, FactorizedLinear) else module
        if isinstance(source, FactorizedEmbedding):
            found[id(source)] = source
    return list(found.values())


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_round_trip_logits_identical(name: str, tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = build(name)
    compress_and_save(model, tmp_path / "out")
    expected = forward_logits(model, tiny_ids)
    for loaded in (plain_load(model, tmp_path / "out"), embcompress.load(tmp_path / "out")):
        assert type(loaded) is type(model)
        assert isinstance(loaded.get_input_embeddings(), FactorizedEmbedding)
        diff = (forward_logits(loaded, tiny_ids) - expected).abs().max().item()
        assert diff < 1e-5, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_tying_preserved_and_counts_match_file(name: str, tmp_path: Path) -> None:
    model = build(name)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    result = compress_and_save(model, tmp_path / "out")
    tensors = stored_tensors(tmp_path / "out")
    factor_keys = sorted(k for k in tensors if k.endswith((".codes", ".basis")))
    owners = [m for m in result.modules if m.tied_to is None]
    assert len(factor_keys) == 2 * len(owners)
    assert sum(tensors[k].numel() for k in factor_keys) == sum(m.params_after for m in result.modules)
    assert sum(tensors[k].numel() * tensors[k].element_size() for k in factor_keys) == sum(
        m.bytes_after for m in result.modules
    )
    dense = [k for k in tensors if k.endswith(("embed_tokens.weight", "word_embeddings.weight"))]
    assert all(tensors[k].numel() == 0 for k in dense)  # only the empty load guard (see hf_integration)
    assert result.params_after == sum(t.numel() for t in tensors.values())

    loaded = embcompress.load(tmp_path / "out")
    head = loaded.get_output_embeddings()
    if tied:
        assert isinstance(head, FactorizedLinear)
        assert head.source is loaded.get_input_embeddings()
        assert head.source.codes is loaded.get_input_embeddings().codes
        assert len(factor_sources(loaded)) == 1
    elif head is not None:
        assert head.source is not loaded.get_input_embeddings()
        assert len(factor_sources(loaded)) == 2


@pytest.mark.parametrize("target", ["input", "output"])
def test_single_target_on_tied_model(target: str, tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = make_tiny("llama-tied")
    dense_weight = model.get_input_embeddings().weight.detach().clone()
    compress_and_save(model, tmp_path / "out", targets=(target,))
    loaded = embcompress.load(tmp_path / "out")
    other = loaded.get_output_embeddings() if target == "input" else loaded.get_input_embeddings()
    replaced = loaded.get_input_embeddings() if target == "input" else loaded.get_output_embeddings()
    assert isinstance(other, nn.Embedding | nn.Linear)
    assert torch.equal(other.weight, dense_weight)
    assert isinstance(replaced, FactorizedEmbedding | FactorizedLinear)
    assert torch.equal(forward_logits(loaded, tiny_ids), forward_logits(model, tiny_ids))
    tensors = stored_tensors(tmp_path / "out")
    dense_key = "lm_head.weight" if target == "input" else "model.embed_tokens.weight"
    assert torch.equal(tensors[dense_key], dense_weight)


def test_bert_decoder_bias_kept(tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = make_tiny("bert-mlm")
    with torch.no_grad():
        model.cls.predictions.decoder.bias.copy_(torch.linspace(-1, 1, VOCAB))
    bias = model.cls.predictions.decoder.bias.detach().clone()
    result = compress_and_save(model, tmp_path / "out")
    assert result.config.module("cls.predictions.decoder").bias
    loaded = embcompress.load(tmp_path / "out")
    head = loaded.get_output_embeddings()
    assert isinstance(head, FactorizedLinear)
    assert torch.equal(head.bias, bias)
    assert torch.equal(forward_logits(loaded, tiny_ids), forward_logits(model, tiny_ids))


def test_t5_aliases_share_one_module(tmp_path: Path) -> None:
    model = make_tiny("t5")
    result = compress_and_save(model, tmp_path / "out")
    spec = result.config.modules[0]
    assert spec.path == "shared"
    assert sorted(spec.aliases) == ["decoder.embed_tokens", "encoder.embed_tokens"]
    assert sorted(k for k in stored_tensors(tmp_path / "out") if k.endswith((".codes", ".basis"))) == [
        "shared.basis",
        "shared.codes",
    ]
    loaded = embcompress.load(tmp_path / "out")
    assert isinstance(loaded.shared, FactorizedEmbedding)
    assert loaded.encoder.embed_tokens is loaded.shared
    assert loaded.decoder.embed_tokens is loaded.shared
    assert loaded.get_output_embeddings().source is loaded.shared


def test_padded_vocabulary_rows_kept(tmp_path: Path) -> None:
    model = make_tiny("llama-untied")
    original = model.get_input_embeddings().weight.detach().clone()
    compress_and_save(model, tmp_path / "out")
    in_memory = model.get_input_embeddings().dense()
    loaded = embcompress.load(tmp_path / "out")
    emb = loaded.get_input_embeddings()
    assert (emb.num_embeddings, emb.embedding_dim) == tuple(original.shape)
    assert loaded.get_output_embeddings().out_features == original.shape[0]
    ids = torch.arange(original.shape[0])
    assert torch.equal(emb(ids), in_memory)


def test_int8_and_half_factor_dtypes_round_trip(tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    for dtype in ("int8", "float16"):
        model = make_tiny("llama-tied")
        compress_and_save(model, tmp_path / dtype, factor_dtype=dtype)
        tensors = stored_tensors(tmp_path / dtype)
        assert str(tensors["model.embed_tokens.codes"].dtype) == f"torch.{dtype}"
        for loaded in (plain_load(model, tmp_path / dtype), embcompress.load(tmp_path / dtype)):
            # The factors' storage dtype must not leak into the rest of the model (dtype="auto" loading).
            assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
            assert (forward_logits(loaded, tiny_ids) - forward_logits(model, tiny_ids)).abs().max() < 1e-5


def test_bfloat16_model_reloads_in_its_own_dtype(tmp_path: Path, tiny_ids: torch.Tensor) -> None:
    model = make_tiny("llama-tied").to(torch.bfloat16)
    compress_and_save(model, tmp_path / "out")
    expected = forward_logits(model, tiny_ids)
    for loaded in (plain_load(model, tmp_path / "out"), embcompress.load(tmp_path / "out")):
        assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert loaded.get_input_embeddings().compute_dtype == torch.bfloat16
        assert torch.equal(forward_logits(loaded, tiny_ids), expected)
    upcast = embcompress.load(tmp_path / "out", dtype=torch.float32)
    assert upcast.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_config_json_has_quantization_section(tmp_path: Path) -> None:
    model = make_tiny("llama-tied")
    compress_and_save(model, tmp_path / "out")
    raw = json.loads((tmp_path / "out" / "config.json").read_text())
    section = raw["quantization_config"]
    assert section["quant_method"] == "embcompress"
    assert section["format_version"] == embcompress.FORMAT_VERSION
    assert [m["path"] for m in section["modules"]] == ["model.embed_tokens", "lm_head"]
    assert section["modules"][1]["tied_to"] == "model.embed_tokens"
    config = read_compression_config(tmp_path / "out")
    assert expected_factor_keys(config) == {"model.embed_tokens.codes", "model.embed_tokens.basis"}


# -- strict loading --------------------------------------------------------------------------------------


def _rewrite(folder: Path, drop: str | None = None, add: dict[str, torch.Tensor] | None = None) -> None:
    tensors = load_file(str(folder / WEIGHTS_NAME))
    if drop is not None:
        del tensors[drop]
    tensors.update(add or {})
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def test_load_refuses_missing_factor(tmp_path: Path) -> None:
    compress_and_save(make_tiny("llama-untied"), tmp_path / "out")
    _rewrite(tmp_path / "out", drop="lm_head.source.codes")
    with pytest.raises(CheckpointError, match=r"missing factor tensor\(s\): lm_head\.source\.codes"):
        embcompress.load(tmp_path / "out")
    # Plain transformers after the import refuses too (the quantizer checks the files first).
    with pytest.raises(CheckpointError, match=r"missing factor tensor\(s\): lm_head\.source\.codes"):
        transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out"))


def test_load_refuses_unexpected_dense_weight(tmp_path: Path) -> None:
    model = make_tiny("llama-tied")
    compress_and_save(model, tmp_path / "out")
    _rewrite(tmp_path / "out", add={"model.embed_tokens.weight": torch.zeros(VOCAB, 16)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): model\.embed_tokens\.weight"):
        embcompress.load(tmp_path / "out")


def test_load_refuses_non_embcompress_and_missing_folders(tmp_path: Path) -> None:
    make_tiny("llama-tied").save_pretrained(tmp_path / "dense")
    with pytest.raises(CheckpointError, match="not an embcompress checkpoint"):
        embcompress.load(tmp_path / "dense")
    with pytest.raises(CheckpointError, match="does not exist"):
        embcompress.load(tmp_path / "nowhere")


def test_load_refuses_newer_format_version(tmp_path: Path) -> None:
    compress_and_save(make_tiny("llama-tied"), tmp_path / "out")
    cfg_file = tmp_path / "out" / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw["quantization_config"]["format_version"] = embcompress.FORMAT_VERSION + 1
    cfg_file.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="newer than this embcompress supports"):
        embcompress.load(tmp_path / "out")


# -- atomic output ---------------------------------------------------------------------------------------


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_output_dir_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out) as tmp:
        (tmp / "partial.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_output_dir_exception_keeps_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True):
        raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_output_dir_replaces_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(EmbcompressError, match="already exists; pass --overwrite"), atomic_output_dir(out):
        pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


# -- densify ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-mlm", "t5"])
def test_densify_matches_compressed(name: str, tiny_ids: torch.Tensor) -> None:
    model = make_tiny(name)
    factorize_model(model, FactorizeOptions(rank=RANK))
    dense = embcompress.densify(model)
    assert type(dense.get_input_embeddings()) is nn.Embedding
    assert not hasattr(dense.config, "quantization_config")
    diff = (forward_logits(dense, tiny_ids) - forward_logits(model, tiny_ids)).abs().max().item()
    assert diff < 1e-5
    head = dense.get_output_embeddings()
    if model.config.tie_word_embeddings and head is not None:
        assert head.weight is dense.get_input_embeddings().weight
    assert isinstance(model.get_input_embeddings(), FactorizedEmbedding)  # the original is untouched


def test_load_refuses_misshapen_factor(tmp_path: Path) -> None:
    compress_and_save(make_tiny("llama-tied"), tmp_path / "out")
    _rewrite(tmp_path / "out", add={"model.embed_tokens.codes": torch.ones(VOCAB, RANK - 1)})
    with pytest.raises(
        CheckpointError, match=r"wrong shape: model\.embed_tokens\.codes \[96, 3\] \(config says \[96, 4\]\)"
    ):
        embcompress.load(tmp_path / "out")


def test_load_refuses_dense_weight_under_alias(tmp_path: Path) -> None:
    compress_and_save(make_tiny("t5"), tmp_path / "out")
    _rewrite(tmp_path / "out", add={"encoder.embed_tokens.weight": torch.zeros(VOCAB, 16)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): encoder\.embed_tokens\.weight"):
        embcompress.load(tmp_path / "out")


def test_densify_keeps_a_scaled_embedding_and_the_dense_export_reloads(tmp_path: Path) -> None:
    cfg = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        scale_embedding=True,
    )
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(cfg).eval()
    factorize_model(model, FactorizeOptions(rank=8))
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).logits
        dense = densify(model)
        assert dense.get_input_embeddings().embed_scale == pytest.approx(4.0)
        assert torch.allclose(dense(input_ids=ids, decoder_input_ids=ids).logits, expected, atol=1e-5)
        dense.save_pretrained(tmp_path / "dense")
        reloaded = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "dense").eval()
        assert torch.allclose(reloaded(input_ids=ids, decoder_input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["llama-untied", "bert-mlm"])
def test_large_outputs_are_written_sharded_and_load_back_identically(name: str, tmp_path: Path, tiny_ids) -> None:
    model = build(name)
    factorize_model(model, FactorizeOptions(rank=RANK))
    expected = forward_logits(model, tiny_ids)
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_model_files(model, folder, max_shard_bytes=4096)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (folder / WEIGHTS_NAME).exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    stored = {k for shard in shards for k in load_file(str(shard))}
    assert set(index["weight_map"]) == stored
    assert index["metadata"]["total_size"] == sum(p.stat().st_size for p in shards) - sum(
        _header_bytes(p) for p in shards
    )
    assert torch.equal(forward_logits(embcompress.load(folder), tiny_ids), expected)


def _header_bytes(path: Path) -> int:
    """Bytes of a safetensors file before its tensor data (8-byte length + JSON header)."""
    with path.open("rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def test_sharded_input_checkpoints_are_read(tmp_path: Path, tiny_ids) -> None:
    source = tmp_path / "src"
    make_tiny("llama-untied").save_pretrained(source, max_shard_size="20KB")
    assert len(list(source.glob("*.safetensors"))) > 1
    out = tmp_path / "out"
    embcompress.factorize_checkpoint(str(source), out, FactorizeOptions(rank=RANK))
    reference = make_tiny("llama-untied")
    factorize_model(reference, FactorizeOptions(rank=RANK))
    assert torch.allclose(
        forward_logits(embcompress.load(out), tiny_ids), forward_logits(reference, tiny_ids), atol=1e-5
    )
