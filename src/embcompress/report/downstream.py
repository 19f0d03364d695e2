"""Human-rated similarity: does the compressed encoder still rank pairs of texts the way people do?

Spearman correlation between the cosine similarities of a model's sentence embeddings and human
ratings, on three sets that ship in gensim's wheel (``gensim/test/test_data/``, read from the
installed package, never copied into this project; ``pip install gensim==4.4.0`` provides them):

* ``lee``: Lee, Pincombe & Welsh (2005) news documents: 50 documents (``lee.cor``, one per line,
  Latin-1) and the mean human rating of every pair (``similarities0-1.txt``, a 50 x 50 matrix whose
  upper triangle holds the 1225 rated pairs);
* ``simlex999``: SimLex-999 word pairs rated for similarity (``simlex999.txt``);
* ``wordsim353``: WordSim-353 word pairs rated for relatedness (``wordsim353.tsv``).

Each word is embedded as a one-word sentence. Embeddings come from :func:`embcompress.sentence.encode`:
the sentence-transformers pipeline of the folder (pooling, Dense, Normalize, default prompt, its
``max_seq_length``) or mean pooling for a bare encoder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EmbcompressError
from ..sentence import SentencePipeline, encode

GENSIM_INSTALL = "pip install gensim==4.4.0"
#: Data set name -> (files read from gensim's test data, what it is).
DATA_SETS: dict[str, tuple[tuple[str, ...], str]] = {
    "lee": (("lee.cor", "similarities0-1.txt"), "Lee news-document similarity (50 documents, 1225 rated pairs)"),
    "simlex999": (("simlex999.txt",), "SimLex-999 word-pair similarity"),
    "wordsim353": (("wordsim353.tsv",), "WordSim-353 word-pair relatedness"),
}
Encoder = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class RatedPairs:
    """Texts and the human rating of pairs of them.

    Attributes:
        name: Key in :data:`DATA_SETS`.
        texts: Every distinct text, embedded once.
        pairs: ``(P, 2)`` indices into ``texts``.
        ratings: ``(P,)`` mean human rating of each pair.
    """

    name: str
    texts: list[str]
    pairs: torch.Tensor
    ratings: torch.Tensor

    def describe(self) -> dict[str, Any]:
        return {"description": DATA_SETS[self.name][1], "texts": len(self.texts), "pairs": int(self.pairs.shape[0])}


def gensim_test_data() -> Path:
    """The ``test/test_data`` folder of the installed gensim (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(roots[0]) / "test" / "test_data" if roots else None
    files = [name for files, _ in DATA_SETS.values() for name in files]
    if folder is None or not all((folder / name).is_file() for name in files):
        raise EmbcompressError(
            f"human-rated similarity reads {', '.join(files)} from gensim's wheel, which is not installed here: "
            f"run `{GENSIM_INSTALL}`"
        )
    return folder


def lee_documents(folder: Path) -> RatedPairs:
    """The 50 Lee documents and the 1225 pairs above the diagonal of their rating matrix."""
    docs = [line for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    lines = (folder / "similarities0-1.txt").read_text().splitlines()
    matrix = torch.tensor([[float(x) for x in line.split()] for line in lines if line.strip()], dtype=torch.float64)
    if matrix.shape != (len(docs), len(docs)):
        raise EmbcompressError(f"similarities0-1.txt is {tuple(matrix.shape)}, not {len(docs)} x {len(docs)}")
    first, second = torch.triu_indices(len(docs), len(docs), offset=1)
    return RatedPairs("lee", docs, torch.stack([first, second], 1), matrix[first, second])


def word_pairs(path: Path, name: str) -> RatedPairs:
    """Tab-separated ``word, word, rating`` lines (``#`` comments skipped); each distinct word once."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [row for row in rows if len(row) >= 3 and not row[0].startswith("#")]
    index = {word: i for i, word in enumerate(dict.fromkeys(w for row in rows for w in row[:2]))}
    pairs = torch.tensor([[index[row[0]], index[row[1]]] for row in rows], dtype=torch.long)
    return RatedPairs(name, list(index), pairs, torch.tensor([float(row[2]) for row in rows], dtype=torch.float64))


def load_rated_sets(names: tuple[str, ...] = tuple(DATA_SETS)) -> list[RatedPairs]:
    """The rated sets ``names`` from the installed gensim."""
    bad = [name for name in names if name not in DATA_SETS]
    if bad:
        raise EmbcompressError(f"unknown human-rated set(s) {bad}; valid: {', '.join(DATA_SETS)}")
    folder = gensim_test_data()
    files = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}
    return [lee_documents(folder) if name == "lee" else word_pairs(folder / files[name], name) for name in names]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based, float64) with tied values sharing the mean of their ranks."""
    order = torch.argsort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty(values.shape[0], dtype=torch.float64)
    ranks[order] = ((ends - counts.double() + ends - 1) / 2)[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson correlation of the average ranks)."""
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def rated_similarity(encoder: Encoder, sets: list[RatedPairs]) -> dict[str, float]:
    """Spearman of cosine similarity vs human rating on each set; ``encoder(texts)`` gives embeddings."""
    out = {}
    for rated in sets:
        emb = F.normalize(encoder(rated.texts).double(), dim=-1)
        cosine = (emb[rated.pairs[:, 0]] * emb[rated.pairs[:, 1]]).sum(-1)
        out[rated.name] = spearman(cosine, rated.ratings)
    return out


def model_encoder(model: nn.Module, tokenizer: Any, pipeline: SentencePipeline | None) -> Encoder:
    """``texts -> embeddings`` of ``model`` through ``pipeline`` (see :func:`embcompress.sentence.encode`)."""
    return lambda texts: encode(model, tokenizer, texts, pipeline=pipeline)


def downstream_section(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    references: dict[str, Callable[[], nn.Module]],
    pipeline: SentencePipeline | None,
    sets: list[RatedPairs] | None = None,
) -> dict[str, Any]:
    """Spearman of the teacher, the student and each reference (built on demand by ``references``), and
    each one's change against the teacher, on every rated set."""
    sets = sets if sets is not None else load_rated_sets()
    original = rated_similarity(model_encoder(teacher, tokenizer, pipeline), sets)

    def row(name: str, model: nn.Module) -> dict[str, Any]:
        scores = rated_similarity(model_encoder(model, tokenizer, pipeline), sets)
        return {"name": name, "spearman": scores, "change": {k: v - original[k] for k, v in scores.items()}}

    rows = [row("student", student)] + [row(name, build()) for name, build in references.items()]
    return {"sets": {s.name: s.describe() for s in sets}, "original": original, "rows": rows}
