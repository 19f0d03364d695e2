"""Tiny models saved with a tiny WordLevel tokenizer and a Zipf-distributed text, built offline in-process."""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from embcompress.factorize import FactorizeOptions, factorize_checkpoint
from helpers.models import VOCAB, make_tiny

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
#: Words used in the text; the remaining ones are never seen.
USED = 60


def make_tokenizer(encoder: bool, reverse: bool = False) -> PreTrainedTokenizerFast:
    """WordLevel over ``SPECIALS + WORDS``; ``reverse`` numbers the words backwards (a different vocabulary)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + (WORDS[::-1] if reverse else WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if encoder:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token=None if encoder else "</s>",
    )


def write_text(path: Path, docs: int = 40, words: int = 30, seed: int = 0) -> Path:
    """Paragraphs of Zipf-distributed words ``w0..w59`` (``w60..`` never occur)."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(USED)]
    paragraphs = [" ".join(rng.choices(WORDS[:USED], weights, k=words)) for _ in range(docs)]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def tiny_folder(root: Path, arch: str = "llama-tied", seed: int = 0) -> Path:
    """A tiny model of ``arch`` saved with its tokenizer."""
    folder = root / f"teacher-{arch}-{seed}"
    make_tiny(arch, seed).save_pretrained(folder)
    make_tokenizer(encoder=not arch.startswith(("llama", "gpt2"))).save_pretrained(folder)
    return folder


def tiny_student(root: Path, teacher: Path, rank: int = 4, **options: object) -> Path:
    """An embcompress checkpoint of ``teacher`` at ``rank``."""
    out = root / f"student-{teacher.name}-r{rank}"
    factorize_checkpoint(str(teacher), out, FactorizeOptions(rank=rank, **options))  # type: ignore[arg-type]
    return out
