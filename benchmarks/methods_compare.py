"""Compare the factorization methods on MiniLM and SmolLM2 at one comparable budget.

For each model and method: relative error, frequency-weighted relative error (token counts from the
train split of the Python docs corpus), fit time, stored bytes; for MiniLM also the mean cosine of
mean-pooled, normalised sentence embeddings to the original model's on held-out paragraphs, and the
overlap of each paragraph's 10 nearest neighbours. Per-row int8 / int4 quantization of the full
matrix are reference rows.

Run (shared 2-core machine, one torch thread: small ops on 2 contended threads mostly spin)::

    nice -n 5 python benchmarks/methods_compare.py [--models minilm,smollm2] [--paragraphs 500]

Prints JSON on stdout and writes benchmarks/results/methods_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embcompress import FactorizedEmbedding, FactorizeOptions, get_method
from embcompress.data import count_tokens, iter_documents, split_documents
from embcompress.factorize import plan, relative_error
from embcompress.frequency import weights_from_counts
from embcompress.methods import FitContext
from embcompress.quant import fake_quantize_rows
from embcompress.sizes import quantized_nbytes
from embcompress.sources import load_model, load_tokenizer, resolve_source

logger = logging.getLogger("methods_compare")

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
RESULTS = Path(__file__).resolve().parent / "results"
RANK = 64
MAX_COUNT_TOKENS = 2_000_000


@dataclass
class Variant:
    """One row of the comparison: a method run through ``plan`` + ``build``."""

    label: str
    method: str
    rank: int = RANK
    factor_dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)


def variants(model: str) -> list[Variant]:
    """The rows for ``model`` (all at rank 64's budget, plus a few reference-table budgets for MiniLM)."""
    nmf_iter = 200 if model == "minilm" else 100
    rows = [
        Variant("svd r64", "svd"),
        Variant("weighted-svd r64", "weighted-svd"),
        Variant("grouped r64 budget (top 4000 + rest, auto ranks)", "grouped", options={"buckets": [4000, "rest"]}),
        Variant(f"nmf r64 (HALS, {nmf_iter} it)", "nmf", options={"max_iter": nmf_iter}),
        Variant("nonlinear r64 (relu, hidden 128)", "nonlinear"),
        Variant("nonlinear r64 DeFINE-style (depth 3, groups 4)", "nonlinear", options={"depth": 3, "groups": 4}),
        Variant("weighted-svd r64 int8 factors", "weighted-svd", factor_dtype="int8"),
    ]
    if model == "minilm":
        rows += [
            Variant("svd r128", "svd", rank=128),
            Variant("weighted-svd r128", "weighted-svd", rank=128),
            Variant(
                "grouped: top 4000 dense + r64 rest",
                "grouped",
                rank=106,
                options={"buckets": [4000, "rest"], "bucket_ranks": ["dense", 64]},
            ),
        ]
    else:
        rows.append(Variant("svd r128 int8 factors", "svd", rank=128, factor_dtype="int8"))
    return rows


def module_bytes(module: nn.Module) -> int:
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in params)


def load(alias: str) -> tuple[nn.Module, Any]:
    source = resolve_source(alias)
    return load_model(source, torch.float32, "cpu", False).eval(), load_tokenizer(source)


def token_counts(tokenizer: Any, vocab: int) -> torch.Tensor:
    docs = split_documents(iter_documents(PYDOCS), "train")
    return count_tokens(tokenizer, docs, vocab, max_tokens=MAX_COUNT_TOKENS)


def heldout_paragraphs(n: int) -> list[str]:
    docs = (d for d in split_documents(iter_documents(PYDOCS), "heldout") if len(d.split()) >= 8)
    return list(itertools.islice(docs, n))


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer: Any, texts: list[str], batch: int = 32) -> torch.Tensor:
    """Mean-pooled over the attention mask and L2-normalised, as sentence-transformers does for MiniLM."""
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(
            texts[start : start + batch], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def neighbour_overlap(ref: torch.Tensor, other: torch.Tensor, k: int = 10) -> float:
    def knn(x: torch.Tensor) -> torch.Tensor:
        sims = x @ x.T
        sims.fill_diagonal_(-2)
        return sims.topk(k, dim=1).indices

    a, b = knn(ref), knn(other)
    return float(sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True)) / (k * len(a)))


class SentenceEval:
    """Sentence-embedding fidelity of MiniLM with its word embedding replaced by a given dense matrix."""

    def __init__(self, model: nn.Module, tokenizer: Any, texts: list[str]) -> None:
        self.model, self.tokenizer, self.texts = model, tokenizer, texts
        self.reference = sentence_embeddings(model, tokenizer, texts)

    def __call__(self, matrix: torch.Tensor) -> dict[str, float]:
        emb = self.model.get_input_embeddings()
        original = emb.weight.data
        emb.weight.data = matrix.to(original.dtype)
        try:
            other = sentence_embeddings(self.model, self.tokenizer, self.texts)
        finally:
            emb.weight.data = original
        cos = (self.reference * other).sum(1)
        return {"mean_cosine": float(cos.mean()), "top10_overlap": neighbour_overlap(self.reference, other)}


def run_variant(model: nn.Module, variant: Variant, weights: torch.Tensor) -> tuple[FactorizedEmbedding, float]:
    options = FactorizeOptions(
        method=variant.method,
        rank=variant.rank,
        targets=("input",),
        factor_dtype=variant.factor_dtype,
        method_options=dict(variant.options),
    )
    method = get_method(variant.method)
    row_weights = weights if method.weights_use != "none" and method.name != "nonlinear" else None
    config, found = plan(model, options, row_weights)
    spec = copy.deepcopy(config.modules[0])
    start = time.perf_counter()
    module = method.build(spec, found.input_module.weight.detach(), FitContext(0, row_weights, dict(variant.options)))
    return module, time.perf_counter() - start


def evaluate_model(alias: str, paragraphs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, tokenizer = load(alias)
    matrix = model.get_input_embeddings().weight.detach().float()
    rows, cols = matrix.shape
    counts = token_counts(tokenizer, rows)
    weights = weights_from_counts(counts, 0.5, 0.1)
    logger.info("%s loaded and counted in %.1fs", alias, time.perf_counter() - t0)
    sent = SentenceEval(model, tokenizer, heldout_paragraphs(paragraphs)) if alias == "minilm" else None
    dense_bytes = rows * cols * 4
    results: list[dict[str, Any]] = []

    def add(label: str, approx: torch.Tensor, nbytes: int, fit_s: float | None, extra: dict[str, Any]) -> None:
        err2 = (matrix - approx).pow(2).sum(1)
        ref2 = matrix.pow(2).sum(1)
        row = {
            "variant": label,
            "bytes": nbytes,
            "ratio": dense_bytes / nbytes,
            "relative_error": float((err2.sum() / ref2.sum()).sqrt()),
            "weighted_relative_error": float(((err2 * counts).sum() / (ref2 * counts).sum()).sqrt()),
            "fit_s": fit_s,
            **extra,
        }
        if sent is not None:
            row.update(sent(approx))
        results.append(row)
        logger.info("%s %s", alias, json.dumps(row))

    add("original fp32", matrix, dense_bytes, None, {})
    for bits in (8, 4):
        add(
            f"per-row int{bits} (full matrix)",
            fake_quantize_rows(matrix, bits),
            quantized_nbytes(rows, cols, bits),
            None,
            {},
        )
    for variant in variants(alias):
        module, fit_s = run_variant(model, variant, weights)
        with torch.no_grad():
            approx = module.dense().float()
        extra = {
            "method": variant.method,
            "rank": module.rank,
            "factor_dtype": variant.factor_dtype,
            "serving_dense": get_method(variant.method).serving_dense,
            "check_relative_error": relative_error(matrix, module),
        }
        if variant.method == "grouped":
            extra["buckets"] = [f"{n}@{r}" for n, r in zip(module.sizes, module.ranks, strict=True)]
        add(variant.label, approx, module_bytes(module), fit_s, extra)
    return {
        "model": alias,
        "shape": [rows, cols],
        "count_tokens": int(counts.sum()),
        "distinct_tokens": int((counts > 0).sum()),
        "paragraphs": len(sent.texts) if sent is not None else None,
        "rows": results,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Method comparison (embcompress benchmarks/methods_compare.py)",
        "",
        f"Budget: rank {RANK} (same parameter budget) unless the variant says otherwise; input embedding only. "
        "Weighted error: rows weighted by token counts of the train split of the Python docs; "
        "frequency-aware methods fit with weights counts^0.5 (floor 0.1) from the same split. "
        "Sentence metrics: held-out paragraphs. Fit times: one torch thread on a shared 2-core machine.",
        "",
    ]
    for model in report["models"]:
        has_sent = model["paragraphs"] is not None
        lines += [f"## {model['model']} ({model['shape'][0]} x {model['shape'][1]})", ""]
        header = ["variant", "MB", "ratio", "rel. err", "freq-weighted err", "fit s"]
        header += ["mean cosine", "top-10 overlap"] if has_sent else []
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in model["rows"]:
            cells = [
                row["variant"],
                f"{row['bytes'] / 1e6:.1f}",
                f"{row['ratio']:.1f}x",
                f"{row['relative_error']:.3f}",
                f"{row['weighted_relative_error']:.3f}",
                "-" if row["fit_s"] is None else f"{row['fit_s']:.1f}",
            ]
            if has_sent:
                cells += [f"{row['mean_cosine']:.3f}", f"{row['top10_overlap']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--paragraphs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    report: dict[str, Any] = {"rank": RANK, "threads": args.threads, "models": []}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for alias in args.models.split(","):
        report["models"].append(evaluate_model(alias, args.paragraphs))
        (RESULTS / "methods_compare.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "methods_compare.md").write_text(markdown(report))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
