"""Export-clean modules (``torch.export``), the load guard against plain transformers loading, and
model-card conventions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import embcompress
from embcompress.card import base_model_id, render_card
from embcompress.checkpoint import read_compression_config
from embcompress.cli import app
from embcompress.hf_integration import LOAD_GUARD_FILE, LOAD_GUARD_NOTE, load_guard_tensors
from embcompress.methods import get_method
from helpers.models import forward_logits, make_tiny


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-encoder"])
@pytest.mark.parametrize(
    ("method", "factor_dtype"),
    [("svd", "int8"), ("svd", "float32"), ("grouped", "int8"), ("grouped", "float32"), ("transform", None)],
)
def test_torch_export_matches_eager(name: str, method: str, factor_dtype: str | None) -> None:
    model = make_tiny(name)
    info = get_method(method)
    weights = torch.rand(96) + 0.1 if info.weights_use != "none" else None
    budget = {"ratio": 4.0} if info.byte_budget else {"rank": 4, "factor_dtype": factor_dtype}
    opts = embcompress.FactorizeOptions(method=method, **budget)
    embcompress.factorize_model(model, opts, row_weights=weights)
    causal = name.startswith("llama")
    kwargs = {"use_cache": False} if causal else {}
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=60)
    shapes = {"input_ids": {0: batch, 1: seq}, **dict.fromkeys(kwargs)}
    program = torch.export.export(
        model, (), {"input_ids": torch.randint(3, 96, (2, 9)), **kwargs}, dynamic_shapes=shapes
    )
    ids = torch.arange(0, 96).reshape(3, 32)  # every token, so every bucket
    with torch.no_grad(), embcompress.fast_kernels(False):  # the exported graph holds the reference kernels
        expected = model(input_ids=ids, **kwargs)
        got = program.module()(input_ids=ids, **kwargs)
    key = "logits" if causal else "last_hidden_state"
    torch.testing.assert_close(got[key], expected[key])


def compressed(tiny_model_dir: Callable[[str], Path], tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"compressed-{name}"
    result = CliRunner().invoke(app, ["factorize", str(tiny_model_dir(name)), "-o", str(out), "-r", "4"])
    assert result.exit_code == 0, result.output
    return out


def add_load_guard(folder: Path) -> None:
    """What a checkpoint writer adds (see ``hf_integration.load_guard_tensors``)."""
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    tensors.update(load_guard_tensors(read_compression_config(folder)))
    save_file(tensors, str(weights), metadata={"format": "pt"})


PLAIN_LOAD = """
import sys, transformers
getattr(transformers, sys.argv[2]).from_pretrained(sys.argv[1])
assert not any(name.startswith("embcompress") for name in sys.modules)
"""


@pytest.mark.parametrize(("name", "auto"), [("llama-tied", "AutoModelForCausalLM"), ("bert-encoder", "AutoModel")])
def test_plain_loading_of_guarded_checkpoint_fails_loudly(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, tiny_ids: torch.Tensor, name: str, auto: str
) -> None:
    folder = compressed(tiny_model_dir, tmp_path, name)
    expected = forward_logits(embcompress.load(folder), tiny_ids)
    add_load_guard(folder)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(folder), auto], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode != 0
    assert LOAD_GUARD_FILE in proc.stderr + proc.stdout  # the weights file config.json names (never exists)
    assert "pip install embcompress" in LOAD_GUARD_NOTE and "import embcompress" in LOAD_GUARD_NOTE
    # with the plugin imported (this process) the guarded checkpoint loads and matches
    model = getattr(transformers, auto).from_pretrained(folder).eval()
    assert torch.equal(forward_logits(model, tiny_ids), expected)


def test_card_front_matter() -> None:
    readme = "---\nlicense: apache-2.0\ntags:\n- x\n---\n# model\n"
    card = render_card("minilm", "BertModel", {}, kind="encoder", sentence_transformers=True, source_readme=readme)
    meta = card.split("---")[1]
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2\n" in meta
    assert "base_model_relation: quantized\n" in meta
    assert "license: apache-2.0\n" in meta
    assert "library_name: sentence-transformers\n" in meta
    assert "pipeline_tag: sentence-similarity\n" in meta
    card = render_card("smollm2", "LlamaForCausalLM", {}, kind="causal-lm")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "library_name: transformers" in card and "pipeline_tag: text-generation" in card
    assert "license:" not in card and render_card("x", "Y", {}).startswith("---\nlibrary_name: transformers")
    assert base_model_id("org/name") == "org/name" and base_model_id("/abs/path") is None
