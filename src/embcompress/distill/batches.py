"""Training and held-out batches: streamed from a corpus, or generated without data.

Every batch is reproducible from ``(seed, rank, index)`` alone, so a resumed run sees exactly
the batches it would have seen without the interruption, and each process of a multi-process
run sees different data.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import chunked, document_windows, iter_documents, packed_windows, pad_rows, split_documents, token_stream
from ..errors import EmbcompressError
from .config import DistillConfig

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Token ids and attention mask (B, L); ``key`` identifies the batch within an epoch (cache)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    key: int = -1

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def collate(windows: list[torch.Tensor], pad_id: int, key: int = -1) -> Batch:
    """Right-pad windows to the longest one."""
    return Batch(*pad_rows(windows, pad_id), key)


def pad_id_of(tokenizer: Any) -> int:
    ids = (getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id", "unk_token_id"))
    return next((int(i) for i in ids if i is not None), 0)


class CorpusBatches:
    """Endless batches of the training split of a corpus, sharded over processes.

    Windows are packed (causal / masked LMs) or one per document (encoders), passed through a
    seeded shuffle buffer, and window ``i`` goes to process ``i % world``. Epochs repeat the same
    order, so a batch's ``key`` (its index within the epoch) names the same data every epoch.
    """

    def __init__(
        self, path: str | Path, tokenizer: Any, config: DistillConfig, per_document: bool, rank: int = 0, world: int = 1
    ) -> None:
        self.path, self.tokenizer, self.config = path, tokenizer, config
        self.per_document, self.rank, self.world = per_document, rank, world
        self.pad_id = pad_id_of(tokenizer)

    def windows(self, split: str) -> Iterator[torch.Tensor]:
        """All windows of ``split`` (``train`` or ``heldout``) in corpus order."""
        cfg = self.config
        docs = split_documents(iter_documents(self.path, cfg.text_field), split, cfg.heldout_fraction, cfg.seed)
        if self.per_document:
            return document_windows(self.tokenizer, docs, cfg.seq_len)
        return packed_windows(token_stream(self.tokenizer, docs), cfg.seq_len)

    def _shuffled(self) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, 17))
        buffer: list[torch.Tensor] = []
        for window in self.windows("train"):
            buffer.append(window)
            if len(buffer) >= self.config.shuffle_buffer:
                yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=gen)))
        while buffer:
            yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=gen)))

    def epoch(self) -> Iterator[Batch]:
        """One pass over this process's shard, in batches of ``batch_size``."""
        mine = (w for i, w in enumerate(self._shuffled()) if i % self.world == self.rank)
        for key, chunk in enumerate(chunked(mine, self.config.batch_size)):
            if len(chunk) < self.config.batch_size:
                return
            yield collate(chunk, self.pad_id, key)

    def iterate(self, skip: int = 0) -> Iterator[Batch]:
        """Endless batches (epoch after epoch), skipping the first ``skip`` (resume)."""
        for epoch in itertools.count():
            produced = 0
            for batch in self.epoch():
                produced += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield batch
            if produced == 0:
                raise EmbcompressError(
                    f"the training data in '{self.path}' is too small for one batch of {self.config.batch_size} x "
                    f"{self.config.seq_len} tokens per process (epoch {epoch} was empty); add data or lower "
                    "--batch-size / --seq-len"
                )
            logger.info("finished data epoch %d (%d batches on rank %d)", epoch, produced, self.rank)

    def heldout(self, count: int) -> tuple[list[Batch], str]:
        """The first ``count`` held-out windows as batches, and which split they came from."""
        windows = list(itertools.islice(self.windows("heldout"), count))
        split = "heldout"
        if not windows:
            logger.warning("the held-out split of '%s' is empty; evaluating on training windows", self.path)
            windows = list(itertools.islice(self.windows("train"), count))
            split = "train (held-out split empty)"
        if not windows:
            raise EmbcompressError(f"the data in '{self.path}' holds no text (0 tokens after tokenization)")
        return [collate(chunk, self.pad_id) for chunk in chunked(windows, self.config.batch_size)], split


def ordinary_token_ids(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Token ids usable as random text: not special, not ``[unused..]`` placeholders, inside the model vocab."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [
        i
        for tok, i in tokenizer.get_vocab().items()
        if i < vocab_size and i not in special and not tok.startswith(("[unused", "<unused", "<|", "[PAD", "<pad"))
    ]
    if not ids:
        raise EmbcompressError("the tokenizer has no ordinary tokens to sample data-free text from")
    return torch.tensor(sorted(ids), dtype=torch.long)


class _SeededBatches:
    """Data-free batches: batch ``i`` is ``make(seed)`` with a seed derived from (seed, process, i)."""

    config: DistillConfig
    rank: int
    world: int
    label: str

    def make(self, seed: int) -> Batch:
        raise NotImplementedError

    def iterate(self, skip: int = 0) -> Iterator[Batch]:
        for index in itertools.count(skip):
            batch = self.make(derive_seed(self.config.seed, self.rank, self.world, index, 1))
            batch.key = index
            yield batch

    def heldout(self, count: int) -> tuple[list[Batch], str]:
        batches = -(-count // self.config.batch_size)
        return [self.make(derive_seed(self.config.seed, i, 2)) for i in range(batches)], self.label


class RandomTokenBatches(_SeededBatches):
    """Data-free batches for encoders / masked LMs: uniform draws from the ordinary tokens
    (the unigram prior without counts), framed like real input ([CLS] ... [SEP]), with lengths
    uniform in ``[seq_len / 4, seq_len]`` so mean pooling sees short and long inputs."""

    def __init__(self, tokenizer: Any, vocab_size: int, config: DistillConfig, rank: int = 0, world: int = 1) -> None:
        self.config, self.rank, self.world = config, rank, world
        self.pool = ordinary_token_ids(tokenizer, vocab_size)
        bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.head = [torch.tensor([bos])] if bos is not None else []
        self.tail = [torch.tensor([eos])] if eos is not None else []
        self.pad_id = pad_id_of(tokenizer)

    def make(self, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        windows = []
        frame = len(self.head) + len(self.tail)
        low = max(2, self.config.seq_len // 4)
        for _ in range(self.config.batch_size):
            length = int(torch.randint(low, self.config.seq_len + 1, (1,), generator=gen)) - frame
            body = self.pool[torch.randint(len(self.pool), (max(length, 1),), generator=gen)]
            windows.append(torch.cat([*self.head, body, *self.tail]))
        return collate(windows, self.pad_id)

    label = "data-free (random tokens)"


class SampledBatches(_SeededBatches):
    """Data-free batches for causal LMs: the teacher samples its own text.

    Each sequence starts from the BOS token (EOS when there is none) and is sampled with
    ``sample_temperature`` and nucleus ``sample_top_p`` for exactly ``seq_len - 1`` new tokens
    (EOS is not allowed to end a sequence early). Batch ``i`` of process ``r`` is sampled under
    ``torch.manual_seed(derive_seed(seed, r, world, i))`` in a forked RNG, so runs are reproducible.
    """

    def __init__(
        self,
        sample: Callable[[torch.Tensor, int], torch.Tensor],
        tokenizer: Any,
        config: DistillConfig,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.sample, self.config, self.rank, self.world = sample, config, rank, world
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise EmbcompressError("data-free sampling needs a BOS or EOS token in the tokenizer; pass --data")
        self.start = int(start)

    def make(self, seed: int) -> Batch:
        prompt = torch.full((self.config.batch_size, 1), self.start, dtype=torch.long)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ids = self.sample(prompt, seed)[:, : self.config.seq_len].cpu()
        return Batch(ids, torch.ones_like(ids))

    label = "data-free (teacher samples)"
