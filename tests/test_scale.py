"""Large vocabularies (slow): a 65536 x 1024 untied Llama through the real path wrappers.

The big shapes of issue #13 (128256 x 4096, 256000 x 2304) are measured by ``benchmarks/scale.py``;
this size keeps the same code paths (chunked Gram, streamed coefficients, row-chunked packing, the
randomized SVD solver) inside CI's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

import embcompress
from embcompress import CompressOptions, FactorizeOptions, LoadOptions, compress_checkpoint, factorize_checkpoint
from helpers.distill import make_tokenizer

pytestmark = pytest.mark.slow
VOCAB, HIDDEN = 65536, 1024


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a decaying spectrum, like trained embeddings (random init is flat)
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            weight.mul_(torch.linspace(3.0, 0.1, HIDDEN)[torch.randperm(HIDDEN)])
    model.save_pretrained(folder)
    make_tokenizer("llama").save_pretrained(folder)
    return folder


def _stored_bytes(folder: Path, prefix: str) -> int:
    total = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            if key.startswith(prefix):
                t = handle.get_slice(key)
                total += int(torch.tensor(t.get_shape()).prod()) * {"U8": 1, "I8": 1, "F16": 2, "I32": 4}.get(
                    t.get_dtype(), 4
                )
    return total


def test_compress_large_vocabulary_untied(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "compressed"
    compress_checkpoint(str(big_model), out, CompressOptions(ratio=8.0, report=False, distill=False), LoadOptions())
    for prefix in ("model.embed_tokens.", "lm_head."):
        assert _stored_bytes(out, prefix) <= VOCAB * HIDDEN * 4 / 8
    model = embcompress.load(out)
    original = LlamaForCausalLM.from_pretrained(big_model).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        with embcompress.fast_kernels(False):
            exact = model(input_ids=ids).logits
        dense = original(input_ids=ids).logits
    torch.testing.assert_close(fast, exact, rtol=0, atol=float(8e-3 * exact.abs().max()))
    relative = (exact - dense).norm() / dense.norm()
    assert relative < 0.25


def test_factorize_large_vocabulary_randomized_solver(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "svd"
    options = FactorizeOptions(rank=128, method_options={"solver": "randomized"})
    factorize_checkpoint(str(big_model), out, options, LoadOptions())
    model = embcompress.load(out)
    head = model.get_output_embeddings()
    assert head.source.rank == 128
    assert _stored_bytes(out, "lm_head.") == (VOCAB + HIDDEN) * 128 * 4
