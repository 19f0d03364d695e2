"""The compress recipe on the real MiniLM (slow): at int4's bytes or fewer it beats per-row int4
on held-out Python-docs paragraphs, without distillation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import embcompress
from embcompress.compress import CompressOptions, compress_checkpoint
from embcompress.data import iter_documents, split_documents
from embcompress.quant import fake_quantize_rows
from embcompress.sizes import quantized_nbytes
from embcompress.sources import load_model, load_tokenizer, resolve_source
from helpers.models import PYDOCS, requires_minilm, requires_pydocs

pytestmark = [pytest.mark.slow, requires_minilm, requires_pydocs]


@torch.no_grad()
def pooled(model: nn.Module, tokenizer: object, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")  # type: ignore[operator]
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_8x_beats_int4_at_fewer_bytes(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    result = compress_checkpoint(
        "minilm", tmp_path / "out", CompressOptions(ratio=8, data=str(PYDOCS), distill=False, report=False)
    )
    source = resolve_source("minilm")
    teacher, tokenizer = load_model(source, torch.float32, "cpu", False).eval(), load_tokenizer(source)
    student = embcompress.load(tmp_path / "out").eval()
    rows, cols = teacher.get_input_embeddings().weight.shape
    assert result.layout.nbytes <= quantized_nbytes(rows, cols, 4)
    docs = split_documents(iter_documents(PYDOCS), "heldout", 0.1)
    texts = list(itertools.islice((d for d in docs if len(d.split()) >= 8), 200))
    reference = pooled(teacher, tokenizer, texts)
    with torch.no_grad():
        teacher.get_input_embeddings().weight.copy_(fake_quantize_rows(teacher.get_input_embeddings().weight, 4))
    int4 = float((pooled(teacher, tokenizer, texts) * reference).sum(-1).mean())
    ours = float((pooled(student, tokenizer, texts) * reference).sum(-1).mean())
    assert ours > int4 > 0.98
