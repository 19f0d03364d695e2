"""Serving speed: dense vs compressed (default ``compress --ratio 8``) checkpoints of the packaged models.

Rows, each measured in a fresh subprocess (so peak RSS is the model's own):

* SmolLM2: ``generate()`` tokens/s at batch 1 and 8 (128 new tokens, greedy, 32-token prompts),
  prefill latency (one 512-token prompt, next-token logits as ``generate()`` computes them), peak RSS;
* MiniLM: sentence-encoding throughput (batch 32, up to 128 tokens, mean pooling), peak RSS.

Variants: ``dense`` (the original, float32), ``compressed`` (the embcompress checkpoint with its
serving kernels), ``compressed-exact`` (the same with ``embcompress.set_fast_kernels(False)``: the
float32 reference products). Issue #13's targets: compressed >= dense on every row; SmolLM2 batch-1
decode >= 1.2x dense.

    nice -n 5 python benchmarks/serving_speed.py            # 2 rounds, about 25 minutes on 2 cores
    python benchmarks/serving_speed.py --worker smollm2 compressed /tmp/...   # one row (internal)

Prints JSON on stdout and writes benchmarks/results/serving_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from distill_common import PYDOCS, WORK, machine, write_results

import embcompress
from embcompress import CompressOptions, LoadOptions, compress_checkpoint, load_source
from embcompress.data import iter_documents

logger = logging.getLogger("serving_speed")
MODELS = ("smollm2", "minilm")
VARIANTS = ("dense", "compressed", "compressed-exact")
NEW_TOKENS = 128
REPEATS = 3


def texts(limit: int = 256) -> list[str]:
    """Paragraphs of the Python docs (prompts and sentences), long enough to fill 128 tokens."""
    return [doc for doc in iter_documents(str(PYDOCS)) if len(doc.split()) > 120][:limit]


def compressed_dir(model: str) -> Path:
    """The default ``compress --ratio 8`` checkpoint of ``model`` (built once, then reused)."""
    out = WORK / f"serving-{model}-8x"
    if not (out / "config.json").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        options = CompressOptions(ratio=8.0, report=False, distill=False)
        compress_checkpoint(model, out, options, LoadOptions(), overwrite=True)
    return out


def load(model: str, variant: str, path: str) -> tuple[Any, Any]:
    if variant == "dense":
        _, net, tokenizer = load_source(model, LoadOptions())
        return net.eval(), tokenizer
    embcompress.set_fast_kernels(variant == "compressed")
    _, net, tokenizer = load_source(path, LoadOptions())
    return net.eval(), tokenizer


def best_of(fn: Any, repeats: int = REPEATS) -> float:
    """Fastest of ``repeats`` timed calls (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def smollm2_rows(net: Any, tokenizer: Any) -> dict[str, float]:
    docs = texts(16)
    prompts = [tokenizer(d, return_tensors="pt").input_ids[:, :32] for d in docs[:8]]
    out: dict[str, float] = {}
    for batch in (1, 8):
        ids = torch.cat(prompts[:batch])
        gen = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

        def run(ids: torch.Tensor = ids, gen: dict[str, Any] = gen) -> None:
            net.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.eos_token_id, **gen)

        seconds = best_of(run, 2)
        out[f"decode_tokens_per_s_batch{batch}"] = batch * NEW_TOKENS / seconds
    long = tokenizer(" ".join(docs), return_tensors="pt").input_ids[:, :512]
    out["prefill_ms_512"] = 1e3 * best_of(lambda: net(input_ids=long, logits_to_keep=1))  # as generate() does
    return out


def minilm_rows(net: Any, tokenizer: Any) -> dict[str, float]:
    docs = texts(256)
    batches = [tokenizer(docs[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
               for i in range(0, len(docs), 32)]  # fmt: skip

    def encode() -> None:
        for batch in batches:
            hidden = net(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1)
            (hidden * mask).sum(1) / mask.sum(1)

    return {"sentences_per_s_batch32": len(docs) / best_of(encode, 2)}


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``: the memory map's own high-water mark, which starts anew
    at ``exec``; ``ru_maxrss`` also counts the parent's resident set at ``fork``)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def worker(model: str, variant: str, path: str) -> None:
    """One row: load, measure, print JSON (peak RSS in MiB included)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    net, tokenizer = load(model, variant, path)
    row: dict[str, Any] = {"model": model, "variant": variant, "load_s": time.perf_counter() - start}
    with torch.no_grad():
        row.update(smollm2_rows(net, tokenizer) if model == "smollm2" else minilm_rows(net, tokenizer))
    row["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(row))


def measure(model: str, variant: str, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", model, variant, str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def is_throughput(key: str) -> bool:
    """A column where higher is better (tokens or sentences per second)."""
    return key.endswith("_per_s") or "_per_s_" in key


def best_row(rows: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """One row's best over rounds: the highest throughput, the lowest latency, load time and peak RSS."""
    best = dict(rows[0])
    for key in best:
        values = [r[key] for r in rows]
        if is_throughput(key):
            best[key] = max(values)
        elif key.startswith(("prefill_ms", "peak_rss", "load_s")):
            best[key] = min(values)
    return best


def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Compressed / dense for every speed column (``prefill_ms``: dense / compressed), per variant."""
    out: dict[str, dict[str, float]] = {}
    dense = {r["model"]: r for r in rows if r["variant"] == "dense"}
    for row in rows:
        if row["variant"] == "dense":
            continue
        base = dense[row["model"]]
        ratios = {k: row[k] / base[k] for k in row if is_throughput(k)}
        ratios |= {k: base[k] / row[k] for k in row if k.startswith("prefill_ms")}
        out[f"{row['model']}/{row['variant']}"] = ratios
    return out


def markdown(data: dict[str, Any]) -> str:
    keys = ["decode_tokens_per_s_batch1", "decode_tokens_per_s_batch8", "prefill_ms_512", "sentences_per_s_batch32"]
    lines = [
        "# Serving speed (benchmarks/serving_speed.py)",
        "",
        f"Machine: `{json.dumps(data['machine'], sort_keys=True)}`.",
        "Best of repeated runs and of the rounds; each row in its own process.",
        "",
        "| model | variant | " + " | ".join(keys) + " | peak RSS MiB |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for row in data["rows"]:
        cells = [f"{row[k]:.1f}" if k in row else "-" for k in keys]
        lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(cells) + f" | {row['peak_rss_mib']:.0f} |")
    lines += ["", "Speed-up over dense (higher is better):", ""]
    for name, ratios in data["speedups"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VARIANT", "PATH"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over all rows; each cell keeps its best.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.worker:
        worker(*args.worker)
        return
    paths = {model: compressed_dir(model) for model in args.models}
    rounds: list[list[dict[str, Any]]] = []
    for _ in range(args.rounds):  # variants interleaved, so a slow spell of the host hits them all
        rounds.append([measure(model, variant, paths[model]) for model in args.models for variant in VARIANTS])
        logger.warning("%s", rounds[-1])
    rows = [best_row(same) for same in zip(*rounds, strict=True)]
    data = {"machine": machine(), "rows": rows, "speedups": speedups(rows), "repeats": REPEATS, "rounds": rounds}
    data["summary"] = {k: statistics.fmean(v.values()) for k, v in data["speedups"].items()}
    write_results("serving_speed", data, markdown(data))


if __name__ == "__main__":
    main()
