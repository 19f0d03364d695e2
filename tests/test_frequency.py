"""The data-free token priority: vocabulary order with placeholder tokens last."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from embcompress.frequency import token_priority


def _tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=vocab[0]))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_placeholders_go_last_and_everything_else_keeps_vocabulary_order() -> None:
    vocab = ["<pad>", "[unused0]", "the", "<unused12>", ",", "<reserved_3>", "of", "unusual", "[UNK]"]
    priority = token_priority(_tokenizer(vocab), 11)  # two rows past the tokenizer (padding rows)
    assert priority.tolist() == [0, 2, 4, 6, 7, 8, 9, 10, 1, 3, 5]
    assert torch.equal(priority.sort().values, torch.arange(11))


def test_without_a_tokenizer_the_priority_is_the_id_order() -> None:
    assert token_priority(None, 5).tolist() == [0, 1, 2, 3, 4]


def test_wordpiece_unused_tokens_go_last(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    priority = token_priority(BertTokenizerFast(str(tmp_path / "vocab.txt")), len(vocab))
    assert priority.tolist()[-2:] == [1, 2] and priority.tolist()[:3] == [0, 3, 4]


def test_wordpiece_non_ascii_single_characters_go_after_the_words(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[unused0]", "[UNK]", "!", "a", "ð", "ﬁ", "##s", "##ð", "the", "of"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    priority = token_priority(BertTokenizerFast(str(tmp_path / "vocab.txt")), len(vocab))
    assert priority.tolist() == [0, 2, 3, 4, 7, 9, 10, 5, 6, 8, 1]
