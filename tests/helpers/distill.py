"""Tiny offline fixtures for distillation tests: a trained WordLevel tokenizer, a synthetic corpus,
tiny teacher folders and their factorized students (real checkpoint writer, no mocks)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from embcompress.checkpoint import SUMMARY_NAME, save_model_files, write_json
from embcompress.factorize import FactorizeOptions, factorize_model
from helpers.models import VOCAB, make_tiny

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
NOUNS = [
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "river",
    "stone",
    "cloud",
    "road",
    "ship",
    "lamp",
    "book",
    "door",
    "wall",
    "field",
]
VERBS = ["sees", "finds", "takes", "moves", "holds", "likes", "makes", "keeps", "opens", "reads", "follows", "builds"]
ADJS = ["red", "big", "old", "small", "green", "quiet", "fast", "cold", "bright", "dark", "warm", "soft"]
DETS = ["the", "a", "this", "that", "every"]


def sentence(rng: random.Random) -> str:
    """A tiny-grammar sentence: structure the teacher's context can carry."""
    return (
        f"{rng.choice(DETS)} {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
        f"{rng.choice(DETS)} {rng.choice(NOUNS)} ."
    )


def write_corpus(path: Path, paragraphs: int = 400, seed: int = 0) -> Path:
    """A text file of ``paragraphs`` blank-line separated paragraphs."""
    rng = random.Random(seed)
    paras = [" ".join(sentence(rng) for _ in range(rng.randint(2, 5))) for _ in range(paragraphs)]
    path.write_text("\n\n".join(paras) + "\n")
    return path


def make_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained in-process on the tiny grammar (fits in ``VOCAB`` ids)."""
    rng = random.Random(0)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator([sentence(rng) for _ in range(500)], trainers.WordLevelTrainer(special_tokens=SPECIALS))
    assert tok.get_vocab_size() <= VOCAB
    if kind == "causal":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]", pad_token="[PAD]"
        )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )


KINDS = {
    "llama-tied": "causal",
    "llama-untied": "causal",
    "gemma3": "causal",
    "bert-mlm": "masked",
    "bert-encoder": "encoder",
}


def make_teacher(name: str, seed: int = 0) -> nn.Module:
    """A tiny model whose embeddings are scaled up so its outputs are far from uniform."""
    model = make_tiny(name, seed)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40.0)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            head.weight.mul_(40.0)
    return model


def build_pair(
    root: Path, name: str, rank: int = 4, seed: int = 0, row_weights: torch.Tensor | None = None, **options: object
) -> tuple[Path, Path]:
    """Write ``root/teacher-<name>`` and its factorized ``root/student-<name>``; return both folders."""
    tokenizer = make_tokenizer(KINDS[name])
    teacher_dir, student_dir = root / f"teacher-{name}", root / f"student-{name}"
    teacher = make_teacher(name, seed)
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    student = make_teacher(name, seed)
    result = factorize_model(student, FactorizeOptions(rank=rank, **options), row_weights)  # type: ignore[arg-type]
    student_dir.mkdir()
    save_model_files(student, student_dir, tokenizer=tokenizer)
    write_json(student_dir / SUMMARY_NAME, {**result.to_dict(), "source": str(teacher_dir)})
    return teacher_dir, student_dir


@pytest.fixture(autouse=False)
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight the other test processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
