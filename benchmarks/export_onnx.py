"""ONNX export of compressed real models: file sizes, equivalence with PyTorch, CPU latency.

MiniLM (all-MiniLM-L6-v2, factorized svd rank 64 int8): ONNX file vs dense ONNX vs the safetensors
checkpoint; mean-pooled sentence embeddings from onnxruntime vs the PyTorch compressed model (cosine)
on up to 1000 paragraphs of the Python docs; onnxruntime latency (batch 8 x 128, median of repeats).
SmolLM2-135M (causal, tied 49152 x 576): max |logit diff| and greedy agreement by re-running the
full sequence. Writes ``benchmarks/results/export_onnx.{json,md}``.

    nice python benchmarks/export_onnx.py [--paragraphs 1000] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import embcompress
from embcompress.onnx_export import export_model_onnx, onnx_session

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
RESULTS = Path(__file__).parent / "results"


def paragraphs(limit: int) -> list[str]:
    out: list[str] = []
    for path in sorted(PYDOCS.rglob("*.txt")):
        out += [p.strip() for p in path.read_text(errors="ignore").split("\n\n") if len(p.strip()) > 80]
        if len(out) >= limit:
            break
    return out[:limit]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


def latencies(paths: dict[str, Path], feeds: dict[str, np.ndarray], repeats: int, threads: int) -> dict[str, float]:
    """Median milliseconds per run of each model, runs interleaved so that load from other jobs on a
    shared machine hits every model alike."""
    sessions = {name: onnx_session(path, threads=threads) for name, path in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for session in sessions.values():
        session.run(None, feeds)
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def minilm(work: Path, n_paragraphs: int, repeats: int, threads: int) -> dict:
    source, model, tokenizer = embcompress.load_source("minilm", embcompress.LoadOptions())
    dense_result = export_model_onnx(model, work / "dense.onnx")
    opts = embcompress.FactorizeOptions(method="svd", rank=64, factor_dtype="int8")
    embcompress.factorize_model(model, opts)
    embcompress.write_checkpoint(model, work / "ckpt", source, tokenizer, {"method": "svd"})
    st_bytes = sum(p.stat().st_size for p in (work / "ckpt").glob("*.safetensors"))
    result = export_model_onnx(model, work / "compressed.onnx")
    session = onnx_session(work / "compressed.onnx", threads=threads)
    texts = paragraphs(n_paragraphs)
    cosines: list[float] = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(texts[start : start + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
        feeds = {name: batch[name] for name in result.inputs}
        with torch.no_grad():
            ref = mean_pool(model(**feeds).last_hidden_state, batch["attention_mask"])
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])
        got = mean_pool(got, batch["attention_mask"])
        cosines += torch.nn.functional.cosine_similarity(ref, got).tolist()
    gen = np.random.default_rng(0)
    feeds = {
        "input_ids": gen.integers(1000, 30000, (8, 128)).astype(np.int64),
        "attention_mask": np.ones((8, 128), dtype=np.int64),
        "token_type_ids": np.zeros((8, 128), dtype=np.int64),
    }
    ms = latencies({"compressed": work / "compressed.onnx", "dense": work / "dense.onnx"}, feeds, repeats, threads)
    return {
        "model": "minilm (all-MiniLM-L6-v2), svd rank 64 int8",
        "onnx_bytes": result.file_bytes,
        "dense_onnx_bytes": dense_result.file_bytes,
        "safetensors_bytes": st_bytes,
        "onnx_over_safetensors": result.file_bytes / st_bytes,
        "onnx_initializers": result.initializers,
        "paragraphs": len(cosines),
        "cosine_min": min(cosines),
        "cosine_mean": statistics.fmean(cosines),
        "latency_ms_compressed": ms["compressed"],
        "latency_ms_dense": ms["dense"],
        "latency_shape": "batch 8 x 128 tokens",
        "threads": threads,
    }


def smollm2(work: Path, steps: int) -> dict:
    source, model, tokenizer = embcompress.load_source("smollm2", embcompress.LoadOptions())
    model = model.float().eval()
    opts = embcompress.FactorizeOptions(method="svd", rank=64, factor_dtype="int8")
    embcompress.factorize_model(model, opts)
    embcompress.write_checkpoint(model, work / "ckpt-llm", source, tokenizer, {"method": "svd"})
    st_bytes = sum(p.stat().st_size for p in (work / "ckpt-llm").glob("*.safetensors"))
    start = time.perf_counter()
    result = export_model_onnx(model, work / "llm.onnx")
    export_s = time.perf_counter() - start
    session = onnx_session(work / "llm.onnx")
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    torch_ids, onnx_ids, max_diff = ids, ids, 0.0
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch_ids, use_cache=False).logits
        feeds = {"input_ids": onnx_ids.numpy(), "attention_mask": np.ones_like(onnx_ids.numpy())}
        onnx_logits = torch.from_numpy(session.run(None, feeds)[0])
        if torch.equal(torch_ids, onnx_ids):
            max_diff = max(max_diff, (logits - onnx_logits).abs().max().item())
        torch_ids = torch.cat([torch_ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        onnx_ids = torch.cat([onnx_ids, onnx_logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return {
        "model": "smollm2 (SmolLM2-135M-Instruct, tied 49152 x 576), svd rank 64 int8, no KV cache",
        "onnx_bytes": result.file_bytes,
        "safetensors_bytes": st_bytes,
        "onnx_over_safetensors": result.file_bytes / st_bytes,
        "onnx_initializers": result.initializers,
        "export_seconds": export_s,
        "max_abs_logit_diff": max_diff,
        "greedy_steps": steps,
        "greedy_agree": torch_ids.tolist() == onnx_ids.tolist(),
        "greedy_text_torch": tokenizer.decode(torch_ids[0]),
        "greedy_text_onnx": tokenizer.decode(onnx_ids[0]),
    }


def markdown(results: dict) -> str:
    m, s = results["minilm"], results.get("smollm2")
    mb = 1e6
    lines = [
        "# ONNX export of compressed embeddings",
        "",
        f"MiniLM ({m['model']}):",
        "",
        "| file | MB |",
        "|---|---|",
        f"| compressed ONNX | {m['onnx_bytes'] / mb:.2f} |",
        f"| dense ONNX | {m['dense_onnx_bytes'] / mb:.2f} |",
        f"| compressed safetensors | {m['safetensors_bytes'] / mb:.2f} |",
        "",
        f"Sentence embeddings (mean-pooled, {m['paragraphs']} paragraphs): cosine ORT vs PyTorch compressed "
        f"min {m['cosine_min']:.6f}, mean {m['cosine_mean']:.6f}.",
        "",
        f"onnxruntime CPU latency, {m['latency_shape']}, {m['threads']} threads, interleaved median: compressed "
        f"{m['latency_ms_compressed']:.1f} ms, dense {m['latency_ms_dense']:.1f} ms.",
        "",
    ]
    if s:
        lines += [
            f"SmolLM2 ({s['model']}): ONNX {s['onnx_bytes'] / mb:.1f} MB vs safetensors "
            f"{s['safetensors_bytes'] / mb:.1f} MB; max |logit diff| {s['max_abs_logit_diff']:.2e}; greedy "
            f"{s['greedy_steps']} steps agree: {s['greedy_agree']}; export {s['export_seconds']:.0f} s.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paragraphs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--greedy-steps", type=int, default=8)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"minilm": minilm(work, args.paragraphs, args.repeats, args.threads)}
        print(json.dumps(results, indent=2), flush=True)
        if not args.skip_smollm2:
            results["smollm2"] = smollm2(work, args.greedy_steps)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_onnx.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS / "export_onnx.md").write_text(markdown(results))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
