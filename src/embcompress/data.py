"""Text corpora for frequency counts, distillation and evaluation.

Sources: a text file (``.txt``, ``.md``, ``.rst`` or any UTF-8 text), a folder of them (searched
recursively), JSONL with a text field, or parquet with a text column. Everything streams: a
corpus is read one document at a time, never whole into memory.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence

from .errors import EmbcompressError

logger = logging.getLogger(__name__)
T = TypeVar("T")

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
DATA_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
TEXT_FIELDS = ("text", "content", "document", "body")


def corpus_files(path: str | Path) -> list[Path]:
    """The files making up a corpus: ``path`` itself or the data files below a folder (sorted)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise EmbcompressError(f"data path '{path}' does not exist; pass a text file, a folder, JSONL or parquet")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if not files:
        raise EmbcompressError(f"data folder '{path}' holds no {', '.join(DATA_SUFFIXES)} files")
    return files


def _read_text(file: Path) -> Iterator[str]:
    """Blocks separated by empty lines, read a line at a time (a multi-GB file streams in bounded memory)."""
    try:
        with file.open(encoding="utf-8") as handle:
            if "\x00" in handle.readline()[:4096]:
                raise EmbcompressError(f"data file '{file}' looks binary, not text")
            handle.seek(0)
            for is_text, lines in itertools.groupby(handle, key=lambda line: line != "\n"):
                text = "".join(lines).strip() if is_text else ""
                if text:
                    yield text
    except UnicodeDecodeError:
        raise EmbcompressError(f"data file '{file}' is not UTF-8 text") from None


def check_text_files(path: str | Path) -> list[Path]:
    """Every file of the corpus decodes as UTF-8 and is not binary (parquet excepted): read once, in
    chunks, before any model is loaded, so a bad file late in a folder fails in seconds, not after the work."""
    files = corpus_files(path)
    for file in files:
        if file.suffix != ".parquet":
            _check_utf8(file)
    return files


def _check_utf8(file: Path, chunk: int = 1 << 20) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with file.open("rb") as handle:
        while block := handle.read(chunk):
            if offset == 0 and b"\x00" in block[:4096]:
                raise EmbcompressError(f"data file '{file}' looks binary, not text; remove it from the data")
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise EmbcompressError(
                    f"data file '{file}' is not UTF-8 text (byte {offset + exc.start}); convert it "
                    "(e.g. iconv -t UTF-8) or remove it from the data"
                ) from None
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise EmbcompressError(f"data file '{file}' is not UTF-8 text (it ends inside a character)") from None


def split_counts(
    path: str | Path, text_field: str | None, heldout_fraction: float, seed: int, enough: int = 1
) -> tuple[int, int]:
    """Documents of the ``train`` and ``heldout`` splits (:func:`split_documents`), counted until both
    reach ``enough``."""
    train = heldout = 0
    for doc in iter_documents(path, text_field):
        if is_heldout(doc, heldout_fraction, seed):
            heldout += 1
        else:
            train += 1
        if train >= enough and heldout >= enough:
            break
    return train, heldout


def _text_of(record: Any, file: Path, field: str | None) -> str:
    if isinstance(record, str):
        return record
    keys = (field,) if field else TEXT_FIELDS
    for key in keys:
        if isinstance(record, dict) and isinstance(record.get(key), str):
            return record[key]
    raise EmbcompressError(f"record in '{file}' has no text field {list(keys)}; pass --text-field")


def _read_jsonl(file: Path, field: str | None) -> Iterator[str]:
    with file.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise EmbcompressError(f"line {lineno} of '{file}' is not valid JSON") from None
            yield _text_of(record, file, field)


def _read_parquet(file: Path, field: str | None) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EmbcompressError("reading parquet needs pyarrow: pip install 'embcompress[data]'") from None
    handle = pq.ParquetFile(file)
    names = handle.schema_arrow.names
    column = field or next((n for n in TEXT_FIELDS if n in names), None)
    if column not in names:
        raise EmbcompressError(f"parquet file '{file}' has no text column (columns: {names}); pass --text-field")
    for batch in handle.iter_batches(columns=[column], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))


def iter_documents(path: str | Path, text_field: str | None = None) -> Iterator[str]:
    """Stream the documents of a corpus (paragraphs of text files, records of JSONL/parquet)."""
    for file in corpus_files(path):
        if file.suffix == ".jsonl":
            yield from _read_jsonl(file, text_field)
        elif file.suffix == ".parquet":
            yield from _read_parquet(file, text_field)
        else:
            yield from _read_text(file)


def is_heldout(document: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split by content hash: the same document lands on the same side every run."""
    digest = hashlib.blake2b(f"{seed}:{document}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_documents(
    documents: Iterable[str], split: str, heldout_fraction: float = 0.1, seed: int = 0
) -> Iterator[str]:
    """Keep the ``"train"`` or ``"heldout"`` side of a deterministic hash split."""
    want_heldout = split == "heldout"
    return (d for d in documents if is_heldout(d, heldout_fraction, seed) == want_heldout)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items of a stream (the last one shorter), read lazily."""
    stream = iter(items)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def token_stream(tokenizer: Any, documents: Iterable[str], batch: int = 64) -> Iterator[int]:
    """Token ids of the documents, each followed by the EOS (or SEP) token when the tokenizer has one."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    for group in chunked(documents, batch):
        for ids in tokenizer(group, add_special_tokens=False)["input_ids"]:
            yield from ids
            if sep is not None:
                yield sep


def packed_windows(tokens: Iterable[int], seq_len: int) -> Iterator[torch.Tensor]:
    """Cut a token stream into consecutive windows of exactly ``seq_len`` ids (the tail is dropped)."""
    for window in chunked(tokens, seq_len):
        if len(window) == seq_len:
            yield torch.tensor(window, dtype=torch.long)


def count_tokens(
    tokenizer: Any, documents: Iterable[str], vocab_size: int, max_tokens: int | None = None
) -> torch.Tensor:
    """Occurrences of each token id (length ``vocab_size``; ids beyond the tokenizer stay 0)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    seen = 0
    for chunk in chunked(token_stream(tokenizer, documents), 65536):
        counts += torch.bincount(torch.tensor(chunk), minlength=vocab_size)[:vocab_size].double()
        seen += len(chunk)
        if max_tokens is not None and seen >= max_tokens:
            break
    if seen == 0:
        raise EmbcompressError("the frequency data holds no text (0 tokens after tokenization)")
    logger.info("counted %d tokens, %d distinct", seen, int((counts > 0).sum()))
    return counts


def document_windows(tokenizer: Any, documents: Iterable[str], seq_len: int, batch: int = 64) -> Iterator[torch.Tensor]:
    """One window per document, framed with the tokenizer's special tokens ([CLS] ... [SEP]) and
    truncated to ``seq_len`` ids: the unit a sentence encoder embeds (no packing across documents)."""
    for group in chunked(documents, batch):
        encoded = tokenizer(group, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
        yield from (torch.tensor(ids, dtype=torch.long) for ids in encoded if ids)


def pad_rows(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to the longest one: ``(input_ids, attention_mask)``, both ``(B, L)`` long."""
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    mask = pad_sequence([torch.ones(len(row), dtype=torch.long) for row in rows], batch_first=True)
    return ids, mask
