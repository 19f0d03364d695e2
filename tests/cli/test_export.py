"""``embcompress export --dense``: a vanilla checkpoint that loads without embcompress."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import embcompress
from embcompress import export as export_module
from embcompress.cli import app
from embcompress.codec import unpack_bits_bytewise
from embcompress.methods import transform
from embcompress.surgery import densify
from helpers.models import forward_logits

# Runs in a fresh interpreter: loads each dense export with transformers only and prints its logits as JSON.
CHILD = """
import json, sys
import torch, transformers
ids = torch.tensor(json.loads(sys.argv[1]))
results = []
for folder, cls_name in zip(sys.argv[2::2], sys.argv[3::2]):
    model = getattr(transformers, cls_name).from_pretrained(folder).eval()
    with torch.no_grad():
        kwargs = {"decoder_input_ids": ids} if cls_name.startswith("T5") else {}
        out = model(input_ids=ids, **kwargs)
    logits = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    results.append({"logits": logits.tolist(), "embedding": type(model.get_input_embeddings()).__name__})
assert not any(name.startswith("embcompress") for name in sys.modules), "embcompress was imported"
print(json.dumps(results))
"""
EXPORTED = ["llama-tied", "llama-untied", "bert-mlm", "t5"]


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def compressed(tiny_model_dir: Callable[[str], Path], tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"compressed-{name}"
    result = CliRunner().invoke(app, ["factorize", str(tiny_model_dir(name)), "-o", str(out), "-r", "4"])
    assert result.exit_code == 0, result.output
    return out


def test_export_dense_loads_without_embcompress(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, tiny_ids: torch.Tensor
) -> None:
    child_args: list[str] = []
    expected: list[torch.Tensor] = []
    for name in EXPORTED:
        src = compressed(tiny_model_dir, tmp_path, name)
        before = hashes(src)
        out = tmp_path / f"dense-{name}"
        result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["format"] == "dense"
        assert hashes(src) == before
        assert "quantization_config" not in json.loads((out / "config.json").read_text())
        with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
            assert not any(k.endswith((".codes", ".basis")) for k in handle.keys())  # noqa: SIM118
        model = embcompress.load(src)
        child_args += [str(out), type(model).__name__]
        expected.append(forward_logits(model, tiny_ids))

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(tiny_ids.tolist()), *child_args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    children = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, child, logits in zip(EXPORTED, children, expected, strict=True):
        assert child["embedding"] == "Embedding", name
        diff = (torch.tensor(child["logits"]) - logits).abs().max().item()
        assert diff < 1e-5, f"{name}: {diff}"


def test_export_without_format_fails(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = compressed(tiny_model_dir, tmp_path, "llama-tied")
    out = tmp_path / "dense"
    result = CliRunner().invoke(app, ["export", str(src), "-o", str(out)])
    assert result.exit_code == 2
    assert "error: choose an export format: --dense or --onnx" in result.stderr
    assert not out.exists()


def test_export_of_dense_model_fails_cleanly(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = tiny_model_dir("llama-tied")
    before = hashes(src)
    out = tmp_path / "dense"
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is not an embcompress checkpoint" in lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert hashes(src) == before


def test_export_existing_output_needs_overwrite(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = compressed(tiny_model_dir, tmp_path, "llama-tied")
    out = tmp_path / "dense"
    out.mkdir()
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out)])
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.stderr
    assert list(out.iterdir()) == []
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def test_export_onto_its_input_refused(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = compressed(tiny_model_dir, tmp_path, "llama-tied")
    before = hashes(src)
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(src), "--overwrite"])
    assert result.exit_code == 2
    assert f"error: output '{src}' overlaps the input '{src}'" in result.stderr
    assert hashes(src) == before


def test_export_of_damaged_checkpoint_fails_cleanly(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = compressed(tiny_model_dir, tmp_path, "llama-untied")
    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.source.codes"] = tensors["lm_head.source.codes"][:, :2].contiguous()
    save_file(tensors, str(src / "model.safetensors"))
    out = tmp_path / "dense"
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lm_head.source.codes [96, 2] (config says [96, 4])" in lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_onnx_layout(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = compressed(tiny_model_dir, tmp_path, "bert-encoder")
    (src / "modules.json").write_text("[]")
    before = hashes(src)
    out = tmp_path / "onnx-out"
    result = CliRunner().invoke(app, ["export", "--onnx", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "onnx" and info["output"] == "last_hidden_state"
    assert info["max_abs_diff"] < 1e-4
    assert (out / "onnx" / "model.onnx").is_file() and (out / "modules.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not list(out.glob("*.safetensors"))
    assert hashes(src) == before
    both = CliRunner().invoke(app, ["export", "--onnx", "--dense", str(src), "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "choose an export format" in both.stderr


def transform_coded(tiny_model_dir: Callable[[str], Path], tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"transform-{name}"
    args = ["factorize", str(tiny_model_dir(name)), "-o", str(out), "-m", "transform", "--ratio", "3"]
    result = CliRunner().invoke(app, [*args, "-O", "head_rows=10"])
    assert result.exit_code == 0, result.output
    return out


def off_by_one(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """A broken unpacking: every code one level up."""
    return (unpack_bits_bytewise(packed, bits, n) + 1) % (2**bits)


def assert_refused(result: Result, out: Path, match: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging copy left


def test_onnx_export_with_broken_unpacking_is_refused(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = transform_coded(tiny_model_dir, tmp_path, "bert-encoder")
    monkeypatch.setattr(transform, "unpack_bits_bytewise", off_by_one)  # only the traced graph unpacks this way
    out = tmp_path / "onnx-out"
    result = CliRunner().invoke(app, ["export", "--onnx", str(src), "-o", str(out)])
    assert_refused(result, out, "differs from PyTorch by up to")
    assert "the export was not written" in result.stderr
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["export", "--onnx", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["max_abs_diff"] < 1e-4 and info["table_max_abs_diff"] < 1e-6
    assert json.loads((out / "embcompress.json").read_text())["table_max_abs_diff"] == info["table_max_abs_diff"]


def test_dense_export_that_changes_rows_is_refused(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = compressed(tiny_model_dir, tmp_path, "llama-untied")

    def broken(model: torch.nn.Module) -> torch.nn.Module:
        dense = densify(model)
        with torch.no_grad():
            dense.get_input_embeddings().weight[7] += 0.5
        return dense

    monkeypatch.setattr(export_module, "densify", broken)
    out = tmp_path / "dense"
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out)])
    assert_refused(result, out, "every embedding row: the export differs from PyTorch")
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["export", "--dense", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] < 1e-5


def test_export_onnx_quantize_int8(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = transform_coded(tiny_model_dir, tmp_path, "bert-encoder")
    out = tmp_path / "q8"
    result = CliRunner().invoke(app, ["export", "--onnx", str(src), "-o", str(out), "--quantize", "int8", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model_quantized.onnx"]  # transformers.js "q8"
    assert info["quantize"] == "int8" and info["path"].endswith("onnx/model_quantized.onnx")
    assert info["table_max_abs_diff"] < 1e-6  # the embedding stays in its code, row for row
    assert info["max_abs_diff_float"] < 1e-4
    assert info["initializers"]["int8"] > 0 and info["initializers"].get("float32", 0) < info["initializers"]["int8"]
    for bad, match in [
        (["--quantize", "int4"], "--quantize must be one of: int8; got 'int4'"),
        (["--quantize", "int8", "--dense"], "--quantize int8 needs --onnx"),
    ]:
        args = ["export", *([] if "--dense" in bad else ["--onnx"]), str(src), "-o", str(tmp_path / "bad"), *bad]
        assert_refused(CliRunner().invoke(app, args), tmp_path / "bad", match)
