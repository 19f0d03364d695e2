"""ONNX export of the default ``compress minilm --ratio 8`` checkpoint: exactness and whole-model int8.

* Float export (``embcompress export --onnx``): mean-pooled, normalised sentence embeddings from
  onnxruntime vs the PyTorch compressed model (reference kernels) on up to 1000 paragraphs of the Python
  docs: min and mean cosine, and the export's own ``max_abs_diff`` / ``table_max_abs_diff``.
* ``--quantize int8`` of that checkpoint vs the dense model exported and quantized the same way
  (``embcompress.onnx_quantize.quantize_int8``: weight transposes folded, onnxruntime dynamic
  quantization, int8 per channel): file bytes, mean cosine to the fp32 original and top-10 overlap
  (each paragraph's 10 nearest other paragraphs, as a share of the original's 10).

Writes ``benchmarks/results/export_onnx.{json,md}``.

    nice python benchmarks/export_onnx.py [--checkpoint DIR] [--paragraphs 1000] [--threads 2]

Without ``--checkpoint`` the checkpoint is compressed first (``compress minilm --ratio 8``, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import embcompress
from embcompress.compress import CompressOptions, compress_checkpoint
from embcompress.onnx_check import CHECK_BATCH, max_positions
from embcompress.onnx_export import export_model_onnx, export_onnx, onnx_session
from embcompress.onnx_quantize import quantize_int8

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
RESULTS = Path(__file__).parent / "results"
Embed = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def paragraphs(limit: int) -> list[str]:
    out: list[str] = []
    for path in sorted(PYDOCS.rglob("*.txt")):
        out += [p.strip() for p in path.read_text(errors="ignore").split("\n\n") if len(p.strip()) > 80]
        if len(out) >= limit:
            break
    return out[:limit]


def sentence_embeddings(texts: list[str], tokenizer: Any, embed: Embed, batch: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised ``last_hidden_state`` (all-MiniLM-L6-v2's pipeline), max 256 tokens."""
    out = []
    for start in range(0, len(texts), batch):
        part = texts[start : start + batch]
        enc = tokenizer(part, padding=True, truncation=True, max_length=256, return_tensors="pt")
        feeds = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = embed(feeds)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def torch_embed(model: torch.nn.Module) -> Embed:
    def embed(feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), embcompress.fast_kernels(False):
            return model(**feeds).last_hidden_state

    return embed


def onnx_embed(path: Path, threads: int) -> Embed:
    session = onnx_session(path, threads=threads)
    names = {i.name for i in session.get_inputs()}

    def embed(feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items() if k in names})[0])

    return embed


def top_overlap(ref: torch.Tensor, got: torch.Tensor, k: int = 10) -> float:
    """Mean share of each paragraph's ``k`` nearest other paragraphs under ``ref`` also nearest under ``got``."""

    def top(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.topk(k, dim=-1).indices

    a, b = top(ref), top(got)
    return statistics.fmean(len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True))


def quality(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(ref, got)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(), "top10_overlap": top_overlap(ref, got)}


def dense_int8(model: torch.nn.Module, work: Path) -> Path:
    """The original model exported to ONNX and quantized like ``--quantize int8``."""
    export_model_onnx(model, work / "dense.onnx", check=False)
    quantize_int8(work / "dense.onnx", work / "dense_quantized.onnx", [])
    return work / "dense_quantized.onnx"


def run(checkpoint: Path, work: Path, n_paragraphs: int, threads: int) -> dict:
    _source, original, tokenizer = embcompress.load_source("minilm", embcompress.LoadOptions())
    original = original.float().eval()
    compressed = embcompress.load(checkpoint, dtype=torch.float32).eval()
    texts = paragraphs(n_paragraphs)
    fp32 = export_onnx(checkpoint, work / "m8")
    q8 = export_onnx(checkpoint, work / "m8q", quantize="int8")
    dense_q8 = dense_int8(original, work)
    ref = sentence_embeddings(texts, tokenizer, torch_embed(original))
    pt_compressed = sentence_embeddings(texts, tokenizer, torch_embed(compressed))
    ort = {
        "onnx_fp32": sentence_embeddings(texts, tokenizer, onnx_embed(Path(fp32.path), threads)),
        "onnx_int8": sentence_embeddings(texts, tokenizer, onnx_embed(Path(q8.path), threads)),
        "dense_int8": sentence_embeddings(texts, tokenizer, onnx_embed(dense_q8, threads)),
    }
    dims = {"tokens_per_check": CHECK_BATCH * max_positions(compressed)}
    return {
        "checkpoint": "compress minilm --ratio 8 (transform code, default options)",
        "paragraphs": len(texts),
        "threads": threads,
        **dims,
        "export_fp32": {**fp32.to_dict(), "vs_pytorch_compressed": quality(pt_compressed, ort["onnx_fp32"])},
        "export_int8": {**q8.to_dict(), "vs_original": quality(ref, ort["onnx_int8"])},
        "dense_int8": {"file_bytes": dense_q8.stat().st_size, "vs_original": quality(ref, ort["dense_int8"])},
        "pytorch_compressed_vs_original": quality(ref, pt_compressed),
        "onnx_fp32_vs_original": quality(ref, ort["onnx_fp32"]),
    }


def markdown(r: dict) -> str:
    mb = 1e6
    f, q, d = r["export_fp32"], r["export_int8"], r["dense_int8"]
    exact = f["vs_pytorch_compressed"]
    row = "| {} | {:.2f} | {:.4f} | {:.4f} | {:.3f} |"
    return "\n".join(
        [
            "# ONNX export of `compress minilm --ratio 8`",
            "",
            f"{r['paragraphs']} paragraphs of the Python docs, mean-pooled normalised sentence embeddings,",
            f"onnxruntime CPU, {r['threads']} threads.",
            "",
            "## Exact: float export vs the PyTorch compressed model",
            "",
            f"cosine min {exact['cosine_min']:.7f}, mean {exact['cosine_mean']:.7f}; the export's own check: "
            f"max |diff| {f['max_abs_diff']:.2e} on the model ({r['tokens_per_check']} tokens), "
            f"{f['table_max_abs_diff']:.2e} on every embedding row. File {f['file_bytes'] / mb:.2f} MB.",
            "",
            "## Whole-model int8 (onnxruntime dynamic quantization, per channel) vs the fp32 original",
            "",
            "| model | MB | mean cosine | min cosine | top-10 overlap |",
            "|---|---|---|---|---|",
            row.format(
                "compressed 8x, `export --onnx --quantize int8`",
                q["file_bytes"] / mb,
                q["vs_original"]["cosine_mean"],
                q["vs_original"]["cosine_min"],
                q["vs_original"]["top10_overlap"],
            ),
            row.format(
                "dense, same quantization",
                d["file_bytes"] / mb,
                d["vs_original"]["cosine_mean"],
                d["vs_original"]["cosine_min"],
                d["vs_original"]["top10_overlap"],
            ),
            row.format(
                "compressed 8x, float export",
                f["file_bytes"] / mb,
                r["onnx_fp32_vs_original"]["cosine_mean"],
                r["onnx_fp32_vs_original"]["cosine_min"],
                r["onnx_fp32_vs_original"]["top10_overlap"],
            ),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="A `compress minilm --ratio 8` checkpoint folder.")
    parser.add_argument("--paragraphs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = work / "minilm-8x"
            compress_checkpoint("minilm", checkpoint, CompressOptions(ratio=8.0, report=False))
        results = run(checkpoint, work, args.paragraphs, args.threads)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_onnx.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS / "export_onnx.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
