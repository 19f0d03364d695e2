"""A tiny sentence-transformers pipeline saved by sentence-transformers itself: a tiny BERT, pooling with
custom settings (CLS + mean, prompt excluded), two Dense modules with their own safetensors weights,
Normalize, and a default prompt."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from helpers.distill import make_teacher, make_tokenizer

PROMPT = "every "
TEXTS = ["the red cat sees a dog .", "a quiet bird holds the old lamp .", "every door opens ."]


def st_modules() -> SimpleNamespace:
    """sentence-transformers' Transformer, Pooling, Dense and Normalize, wherever this version keeps them."""
    try:
        from sentence_transformers.base.modules import Dense, Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    return SimpleNamespace(Dense=Dense, Normalize=Normalize, Pooling=Pooling, Transformer=Transformer)


def build_pipeline(root: Path, architecture: str | None = None) -> Path:
    """Save the pipeline to ``root/pipeline`` (safetensors everywhere); ``architecture`` overrides the
    ``architectures`` that ``config.json`` names (e.g. ``BertForMaskedLM`` over the bare encoder's weights)."""
    from sentence_transformers import SentenceTransformer

    st = st_modules()
    base, folder = root / "pipeline-base", root / "pipeline"
    make_teacher("bert-encoder").save_pretrained(base)
    make_tokenizer("encoder").save_pretrained(base)
    torch.manual_seed(0)
    modules = [
        st.Transformer(str(base), max_seq_length=48),
        st.Pooling(16, pooling_mode=("cls", "mean"), include_prompt=False),
        st.Dense(32, 24, activation_function=torch.nn.Tanh()),
        st.Dense(24, 8, bias=False, activation_function=torch.nn.Identity()),
        st.Normalize(),
    ]
    model = SentenceTransformer(modules=modules, prompts={"query": PROMPT}, default_prompt_name="query", device="cpu")
    model.save(str(folder))
    if architecture is not None:
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = [architecture]
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
