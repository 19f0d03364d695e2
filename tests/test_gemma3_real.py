"""Gemma-3-270m (alias gemma3, 262k x 640, scaled embedding, tied head) end to end on the real model:
the cache makes the second load fast, and a compressed checkpoint reloads and generates like the original
code path. Slow: the first run de-quantizes the GGUF (minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import embcompress
from embcompress.sources import LoadOptions, dequantized_path, load_source, resolve_source
from helpers.models import requires_gemma3

pytestmark = [pytest.mark.slow, requires_gemma3]


def test_alias_resolves_into_the_cache_and_reloads_from_it() -> None:
    source = resolve_source("gemma3")
    assert source.gguf_file == "gemma-3-270m-q4_k_m.gguf" and "site-packages" not in str(source.path)
    load_source("gemma3", LoadOptions())  # builds the de-quantized copy if absent
    assert (dequantized_path(source) / "model.safetensors").is_file()
    started = time.perf_counter()
    _, model, tokenizer = load_source("gemma3", LoadOptions())
    assert time.perf_counter() - started < 120
    emb = model.get_input_embeddings()
    assert tuple(emb.weight.shape) == (262144, 640) and float(emb.embed_scale) == pytest.approx(640**0.5, rel=1e-3)
    assert model.lm_head.weight is emb.weight and tokenizer is not None


def test_compressed_gemma3_reloads_and_generates_the_same(tmp_path: Path) -> None:
    out = tmp_path / "gemma3-8x"
    cmd = [sys.executable, "-m", "embcompress", "compress", "gemma3", "--ratio", "8", "--no-distill", "--no-report"]
    proc = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    via_load = embcompress.load(out)
    via_hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert via_load.get_input_embeddings().spec.embed_scale == pytest.approx(640**0.5, rel=1e-3)
    _, _, tokenizer = load_source("gemma3", LoadOptions())
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = via_load.generate(ids, max_new_tokens=8, do_sample=False)
        b = via_hf.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
    assert (out / "model.safetensors").stat().st_size < 0.55 * (
        dequantized_path(resolve_source("gemma3")) / "model.safetensors"
    ).stat().st_size
