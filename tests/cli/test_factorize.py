"""``embcompress factorize`` through the real CLI: success, and every bad input failing cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from transformers import ViTConfig, ViTModel
from typer.testing import CliRunner, Result

import embcompress
from embcompress.cli import app
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.modules import FactorizedEmbedding
from helpers.models import VOCAB, forward_logits, make_tiny

TOKENIZER_WORDS = 40  # fewer than VOCAB: the model's vocabulary is padded beyond the tokenizer


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def assert_clean_failure(result: Result, message: str, out: Path) -> None:
    """Non-zero exit, one ``error:`` line matching ``message``, no traceback, nothing written."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    if out.parent.is_dir() and os.access(out.parent, os.R_OK):
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def tokenized_dir(tmp_path: Path) -> Path:
    """A tiny BERT MLM folder with a WordPiece tokenizer of ``TOKENIZER_WORDS`` entries (vocab padded to 96)."""
    folder = tmp_path / "src-bert"
    make_tiny("bert-mlm").save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(TOKENIZER_WORDS - 5)]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab=str(vocab_file)).save_pretrained(folder)
    return folder


def test_factorize_writes_loadable_checkpoint(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, tiny_ids: torch.Tensor
) -> None:
    src = tiny_model_dir("llama-tied")
    before = hashes(src)
    out = tmp_path / "out"
    result = invoke("factorize", str(src), "-o", str(out), "--rank", "4", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out)
    assert [m["rank"] for m in summary["modules"]] == [4, 4]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "embcompress.json",
        "generation_config.json",
        "model.safetensors",
    ]
    assert hashes(src) == before

    reference = make_tiny("llama-tied")
    factorize_model(reference, FactorizeOptions(rank=4))
    expected = forward_logits(reference, tiny_ids)
    for loaded in (transformers.AutoModelForCausalLM.from_pretrained(str(out)), embcompress.load(out)):
        diff = (forward_logits(loaded.eval(), tiny_ids) - expected).abs().max().item()
        assert diff < 1e-5, diff


def test_padded_vocabulary_through_cli(tokenized_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("factorize", str(tokenized_dir), "-o", str(out), "--rank", "4", "--json")
    assert result.exit_code == 0, result.output
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) == TOKENIZER_WORDS < VOCAB
    reference = make_tiny("bert-mlm")
    factorize_model(reference, FactorizeOptions(rank=4))
    loaded = embcompress.load(out)
    emb = loaded.get_input_embeddings()
    assert isinstance(emb, FactorizedEmbedding) and emb.num_embeddings == VOCAB
    assert loaded.get_output_embeddings().out_features == VOCAB
    beyond = torch.arange(TOKENIZER_WORDS, VOCAB)
    torch.testing.assert_close(emb(beyond), reference.get_input_embeddings()(beyond), rtol=0, atol=1e-5)
    ids = tokenizer("w1 w2 w3", return_tensors="pt")["input_ids"]
    assert (forward_logits(loaded, ids) - forward_logits(reference, ids)).abs().max() < 1e-5


def test_targets_input_only(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("factorize", str(tiny_model_dir("llama-tied")), "-o", str(out), "-r", "4", "--targets", "input")
    assert result.exit_code == 0, result.output
    loaded = embcompress.load(out)
    assert isinstance(loaded.model.embed_tokens, FactorizedEmbedding)
    assert torch.equal(loaded.lm_head.weight, make_tiny("llama-tied").lm_head.weight)


def test_overwrite_replaces_existing_output(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = tiny_model_dir("llama-tied")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = invoke("factorize", str(src), "-o", str(out), "--rank", "4")
    assert result.exit_code != 0
    assert "already exists; pass --overwrite" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]
    result = invoke("factorize", str(src), "-o", str(out), "--rank", "4", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _vit_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(folder)
    return folder


def _corrupt_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    make_tiny("llama-tied").save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    return folder


def _pickled_dir(tmp_path: Path) -> Path:
    folder = _tiny_dir(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return folder


def _empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def _tiny_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    make_tiny("llama-tied").save_pretrained(folder)
    return folder


# name: (model folder builder (None: the model argument is given literally), extra args, expected message)
BAD_INPUTS: dict[str, tuple[Callable[[Path], Path] | None, list[str], str]] = {
    "nonexistent path": (None, ["--rank", "4"], r"model path '.*/missing' does not exist; pass a model folder"),
    "folder with no model": (_empty_dir, ["--rank", "4"], r"no config\.json in '.*empty': not a Hugging Face model"),
    "no token embedding": (_vit_dir, ["--rank", "4"], r"ViTModel has no token embedding .*ViTPatchEmbeddings"),
    "rank zero": (_tiny_dir, ["--rank", "0"], r"--rank must be a positive integer, got 0"),
    "rank negative": (_tiny_dir, ["--rank-input", "-2"], r"--rank-input must be a positive integer, got -2"),
    "rank above break-even": (_tiny_dir, ["--rank", "14"], r"rank 14 .*between 1 and 13.*break-even rank 13"),
    "pickled weights only": (
        _pickled_dir,
        ["-r", "4"],
        r"no \.safetensors weights .*pytorch_model\.bin.*never unpickles",
    ),
    "corrupt safetensors": (_corrupt_dir, ["--rank", "4"], r"corrupt safetensors file '.*model\.safetensors'"),
    "unknown method": (_tiny_dir, ["--rank", "4", "--method", "pca"], r"unknown method 'pca'; valid methods: .*svd"),
    "unknown target": (_tiny_dir, ["--rank", "4", "--targets", "head"], r"unknown target\(s\) head; valid: input"),
    "unknown factor dtype": (_tiny_dir, ["-r", "4", "--factor-dtype", "int4"], r"unknown factor dtype 'int4'; valid"),
    "unknown dtype": (_tiny_dir, ["-r", "4", "--dtype", "fp8"], r"unknown dtype 'fp8'; valid: float32"),
    "no rank": (_tiny_dir, [], r"no rank given for the input embedding; pass --rank"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(case: str, tmp_path: Path) -> None:
    builder, extra, message = BAD_INPUTS[case]
    model = builder(tmp_path) if builder else tmp_path / "missing"
    before = hashes(model) if model.is_dir() else {}
    out = tmp_path / "out"
    result = invoke("factorize", str(model), "-o", str(out), *extra)
    assert_clean_failure(result, message, out)
    assert (hashes(model) if model.is_dir() else {}) == before


def test_existing_output_without_overwrite(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("factorize", str(tiny_model_dir("llama-tied")), "-o", str(out), "--rank", "4")
    assert result.exit_code != 0
    assert f"output '{out}' already exists; pass --overwrite to replace it" in result.stderr
    assert list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unwritable_output_parent(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = tiny_model_dir("llama-tied")
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new folders to everyone
        parent = Path("/proc")
    else:
        parent = tmp_path / "readonly"
        parent.mkdir()
        parent.chmod(0o555)
    out = parent / "out"
    try:
        result = invoke("factorize", str(src), "-o", str(out), "--rank", "4")
        assert_clean_failure(result, rf"cannot write '{out}': parent folder '{parent}' is not writable", out)
    finally:
        if parent != Path("/proc"):
            parent.chmod(0o755)


def test_parent_is_a_file(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    result = invoke("factorize", str(tiny_model_dir("llama-tied")), "-o", str(out), "--rank", "4")
    assert_clean_failure(result, r"parent folder '.*file' does not exist", out)


def test_hub_id_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the env var is read once, at import
    out = tmp_path / "out"
    result = invoke("factorize", "nobody/no-such-model", "-o", str(out), "--rank", "4", env={"HF_HUB_OFFLINE": "1"})
    assert_clean_failure(result, r"'nobody/no-such-model' is not a local path and the Hugging Face hub", out)


def test_console_script_hub_offline_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "embcompress"
    command = [str(script)] if script.exists() else ["embcompress"]
    start = time.monotonic()
    proc = subprocess.run(
        [*command, "factorize", "nobody/no-such-model", "-o", str(out), "--rank", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: 'nobody/no-such-model' is not a local path")
    assert "pass a local model folder, a packaged alias" in lines[0]
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_overlapping_input_refused(where: str, tmp_path: Path) -> None:
    src = tmp_path / "work" / "model"
    src.parent.mkdir()
    make_tiny("llama-tied").save_pretrained(src)
    before = hashes(tmp_path / "work")
    out = {"same": src, "inside": src / "compressed", "parent": src.parent}[where]
    result = invoke("factorize", str(src), "-o", str(out), "--rank", "4", "--overwrite")
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: output '{out}' overlaps the input '{src}'; choose an output folder outside the input"
    ]
    assert hashes(tmp_path / "work") == before
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model"]
