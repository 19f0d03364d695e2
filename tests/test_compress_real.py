"""The compress recipe on the real packaged models (slow): at int4's bytes or fewer and without
distillation, MiniLM beats per-row int4 on held-out Python-docs paragraphs, and SmolLM2 beats llama.cpp's
Q4_0 (4.5 bits per weight) in KL on text of another kind (Debian fortunes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import embcompress
from embcompress.codec import reference_quantize
from embcompress.compress import CompressOptions, compress_checkpoint
from embcompress.data import iter_documents, split_documents
from embcompress.quant import fake_quantize_rows
from embcompress.sizes import quantized_nbytes
from embcompress.sources import load_model, load_tokenizer, resolve_source
from helpers.models import PYDOCS, requires_minilm, requires_pydocs, requires_smollm2

pytestmark = [pytest.mark.slow]
FORTUNES = Path("/usr/share/games/fortunes")


@torch.no_grad()
def pooled(model: nn.Module, tokenizer: object, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")  # type: ignore[operator]
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@requires_minilm
@requires_pydocs
def test_minilm_8x_beats_int4_at_fewer_bytes(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    result = compress_checkpoint(
        "minilm", tmp_path / "out", CompressOptions(ratio=8, data=str(PYDOCS), distill=False, report=False)
    )
    source = resolve_source("minilm")
    teacher, tokenizer = load_model(source, torch.float32, "cpu", False).eval(), load_tokenizer(source)
    student = embcompress.load(tmp_path / "out").eval()
    rows, cols = teacher.get_input_embeddings().weight.shape
    assert result.mode == "robust" and result.embedding_bytes <= quantized_nbytes(rows, cols, 4)
    docs = split_documents(iter_documents(PYDOCS), "heldout", 0.1)
    texts = list(itertools.islice((d for d in docs if len(d.split()) >= 8), 200))
    reference = pooled(teacher, tokenizer, texts)
    with torch.no_grad():
        teacher.get_input_embeddings().weight.copy_(fake_quantize_rows(teacher.get_input_embeddings().weight, 4))
    int4 = float((pooled(teacher, tokenizer, texts) * reference).sum(-1).mean())
    ours = float((pooled(student, tokenizer, texts) * reference).sum(-1).mean())
    assert ours > int4 > 0.98


def fortunes(limit: int) -> list[str]:
    """Entries of Debian's fortunes with at least 8 words, spread over the files."""
    out = []
    for file in sorted(p for p in FORTUNES.glob("*") if p.is_file() and not p.suffix):
        entries = file.read_text(errors="ignore").split("\n%\n")
        out += [" ".join(e.split()) for e in entries if len(e.split()) >= 8]
    return out[:: max(1, len(out) // limit)][:limit]


@torch.no_grad()
def mean_kl(model: nn.Module, windows: torch.Tensor, reference: torch.Tensor) -> float:
    logp = torch.log_softmax(model(input_ids=windows).logits.float(), -1)
    return float((reference.exp() * (reference - logp)).sum(-1).mean())


@requires_smollm2
@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian fortunes not installed")
def test_smollm2_8x_beats_q4_0_on_text_unlike_anything_it_was_fitted_on() -> None:
    torch.set_num_threads(2)
    _, teacher, tokenizer = embcompress.load_source("smollm2", embcompress.LoadOptions())
    ids = tokenizer("\n\n".join(fortunes(400)), return_tensors="pt")["input_ids"][0]
    windows = ids[: 8 * 128].reshape(8, 128)
    reference = torch.log_softmax(teacher(input_ids=windows).logits.float(), -1)
    weight = teacher.get_input_embeddings().weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(reference_quantize("q4_0", original)[0])  # tied: the head follows
    q4_0 = mean_kl(teacher, windows, reference)
    with torch.no_grad():
        weight.copy_(original)
    options = CompressOptions(ratio=8, distill=False, report=False)  # no text at all: the code is fitted on none
    result = embcompress.compress_model(teacher, tokenizer, options, "smollm2")
    ours = mean_kl(teacher, windows, reference)
    assert result.embedding_bytes <= quantized_nbytes(*original.shape, 4)
    assert ours < q4_0, (ours, q4_0)
