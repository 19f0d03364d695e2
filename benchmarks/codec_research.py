"""Codec research (issue #10): text-independent embedding codecs vs the deployed quantizers.

For SmolLM2-135M-Instruct (tied 49152 x 576; the same de-quantized matrix serves as input embedding and LM head)
and all-MiniLM-L6-v2 (30522 x 384 word embedding), every variant is measured on three offline corpora (Python
docs, Debian fortunes, Debian package descriptions):

* SmolLM2: KL(original || compressed) per next-token distribution and top-1 agreement, 36 windows x 128 tokens;
* MiniLM: mean cosine of mean-pooled normalised sentence embeddings, top-10 neighbour overlap, 1000 paragraphs.

References: per-row int8, Q8_0, Q4_0 (ggml rounding), NF4 (blocks of 64, fp16 absmax), per-row int4.
Transform codes (``embcompress.codec.encode``) at ~4.06 bpw (<= per-row int4 bytes), 2.9 bpw and 2.0 bpw,
with the error metric ``C = E[h h^T]`` of SmolLM2's final normed hidden states estimated on 4096 tokens the
model samples itself from BOS (seed 0): no evaluation text is used by any encoder.

    nice -n 5 python benchmarks/codec_research.py            # everything (~30 min on 2 cores)
    python benchmarks/codec_research.py --models smollm2 --variants q4_0 tc-C-4.06

Teacher outputs are cached in /tmp/codec-cache; per-variant results too (``--fresh`` recomputes them).
Prints JSON and writes benchmarks/results/codec_research.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import codec_harness as h

from embcompress import codec

RESULTS = Path(__file__).parent / "results"
Variant = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]


def _ref(fn: Callable[[torch.Tensor], tuple[torch.Tensor, int]]) -> Variant:
    return lambda e, _ctx: fn(e)


def _tc(bpw: float | str, metric: str | None = None, **kw: Any) -> Variant:
    """A transform-code variant; ``bpw="int4"`` means exactly per-row int4's bytes. The rows recorded before
    rotation and debiasing existed keep them off (``_tc0``); ``-rd`` variants use the library's defaults."""

    def run(e: torch.Tensor, ctx: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        rows, cols = e.shape
        budget = rows * (cols // 2 + 4) if bpw == "int4" else int(float(bpw) * rows * cols / 8)
        code = codec.encode(e, metric=None if metric is None else ctx[metric], max_bytes=budget, **kw)
        ctx["_layout"] = code.layout.tolist()
        return codec.decode(code), codec.nbytes(code)

    return run


def _tc0(bpw: float | str, metric: str | None = None) -> Variant:
    return _tc(bpw, metric, rotate=False, debias=False)


REFERENCES: dict[str, Variant] = {
    "int8": _ref(lambda e: codec.quantize_per_row(e, 8)),
    "q8_0": _ref(codec.quantize_q8_0),
    "q4_0": _ref(codec.quantize_q4_0),
    "nf4-64": _ref(codec.quantize_nf4),
    "int4": _ref(lambda e: codec.quantize_per_row(e, 4)),
}
VARIANTS: dict[str, dict[str, Variant]] = {
    "smollm2": {
        **REFERENCES,
        "tc-CF-int4": _tc0("int4", "C+F"),
        "tc-C-int4": _tc0("int4", "C"),
        "tc-CF-2.9": _tc0(2.9, "C+F"),
        "tc-CF-2.0": _tc0(2.0, "C+F"),
        "tc-plain-int4": _tc0("int4"),
        "tc-Cin-int4": _tc0("int4", "C+in"),
        "tc-C-2.9": _tc0(2.9, "C"),
        "tc-plain-2.9": _tc0(2.9),
        "tc-C-2.0": _tc0(2.0, "C"),
        "tc-C-int4-rd": _tc("int4", "C"),
        "tc-C-int4-rd-r0.33": _tc("int4", "C", ridge=0.33),
        "tc-C-int4-rd-r1": _tc("int4", "C", ridge=1.0),
        "tc-C-2.9-rd": _tc(2.9, "C"),
        "tc-C-2.9-rd-r0.33": _tc(2.9, "C", ridge=0.33),
        "tc-C-2.0-rd": _tc(2.0, "C"),
    },
    "minilm": {
        **REFERENCES,
        "tc-plain-int4": _tc0("int4"),
        "tc-LN-int4": _tc0("int4", "LN"),
        "tc-J-int4": _tc0("int4", "J"),
        "tc-plain-2.9": _tc0(2.9),
        "tc-LN-2.9": _tc0(2.9, "LN"),
        "tc-J-2.9": _tc0(2.9, "J"),
        "tc-plain-2.0": _tc0(2.0),
        "tc-LN-2.0": _tc0(2.0, "LN"),
        "tc-J-2.0": _tc0(2.0, "J"),
        "tc-J-int4-rd-r1": _tc("int4", "J", ridge=1.0),
        "tc-J-int4-rd-r0.43": _tc("int4", "J", ridge=0.43),
        "tc-J-2.9-rd-r1": _tc(2.9, "J", ridge=1.0),
        "tc-J-2.0-rd-r1": _tc(2.0, "J", ridge=1.0),
    },
}


def _norm(m: torch.Tensor) -> torch.Tensor:
    return m / (m.trace() / m.shape[0])


def smollm2_context(model: Any, tok: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Metrics for the encoder: C from self-generated text; C+in adds the first layer's RMSNorm weights."""
    gen = h.generated_hidden(model, tok)["hidden"].double()
    c_gen = gen.T @ gen / gen.shape[0]
    g0 = model.model.layers[0].input_layernorm.weight.detach().double()
    fisher = h.input_fisher(model, tok)
    ctx = {"C": c_gen, "C+in": 0.75 * _norm(c_gen) + 0.25 * _norm(torch.diag(g0**2)), "C+F": c_gen + fisher}
    info: dict[str, Any] = {"C_tokens": gen.shape[0], "trace_C": float(c_gen.trace()), "trace_F": float(fisher.trace())}
    for corpus in h.CORPORA:
        hid = h.lm_teacher(model, tok, corpus)["hidden"].double()
        c = hid.T @ hid / hid.shape[0]
        info[f"C_rel_diff_gen_vs_{corpus}"] = float((_norm(c) - _norm(c_gen)).norm() / _norm(c).norm())
    return ctx, info


def minilm_context(model: Any, tok: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """LN metric: the embedding LayerNorm removes the row mean, then scales dimension i by gamma_i.

    J metric: sensitivity of the normalised pooled embedding, on SmolLM2's self-generated text.
    """
    gamma = model.embeddings.LayerNorm.weight.detach().double()
    n = gamma.numel()
    center = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return {"LN": center @ torch.diag(gamma**2) @ center, "J": h.pooled_sensitivity(model, tok)}, {}


def head_proxy(e: torch.Tensor, approx: torch.Tensor, c: torch.Tensor) -> float:
    """Mean over rows of the C-weighted squared error, relative to the C-weighted energy of the centred rows."""
    d = (approx - e).double()
    x = (e - e.mean(0)).double()
    return float(((d @ c) * d).sum() / ((x @ c) * x).sum())


def run_model(name: str, wanted: list[str] | None, cache: dict[str, Any], cache_file: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    if name == "smollm2":
        model, tok = h.load_smollm2()
        weight = model.model.embed_tokens.weight
        teachers = {c: h.lm_teacher(model, tok, c) for c in h.CORPORA}
        ctx, info = smollm2_context(model, tok)
        compare = h.lm_compare
    else:
        model, tok = h.load_minilm()
        weight = model.embeddings.word_embeddings.weight
        teachers = {c: h.enc_teacher(model, tok, c) for c in h.CORPORA}
        ctx, info = minilm_context(model, tok)
        compare = h.enc_compare
    e = weight.detach().clone()
    rows, cols = e.shape
    out = {"shape": [rows, cols], "info": info, "rows": {}}
    for variant, fn in VARIANTS[name].items():
        if wanted and variant not in wanted:
            continue
        key = f"{name}/{variant}"
        if key not in cache:
            start = time.perf_counter()
            approx, nbytes = fn(e, ctx)
            seconds = time.perf_counter() - start
            row: dict[str, Any] = {"bytes": nbytes, "bpw": round(8 * nbytes / (rows * cols), 4)}
            row["encode_s"] = round(seconds, 2)
            if "_layout" in ctx:
                row["layout"] = ctx.pop("_layout")
            row["rel_mse"] = float(((approx - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum())
            if "C" in ctx:
                row["rel_C_err"] = head_proxy(e, approx, ctx["C"])
            for corpus, teacher in teachers.items():
                row[corpus] = compare(model, teacher, approx)
            cache[key] = row
            cache_file.write_text(json.dumps(cache, indent=1))
            print(key, json.dumps(row), file=sys.stderr, flush=True)
        out["rows"][variant] = cache[key]
    return out


TARGET_BPW = {"8x": "int4", "11x": 2.9, "16x": 2.0}
METRICS = {"smollm2": ("kl", "top1"), "minilm": ("cos", "nn10")}


def _better(model: str, metric: str, a: float, b: float) -> bool:
    return a < b if metric == "kl" else a > b


def verdicts(model: str, data: dict[str, Any]) -> list[str]:
    """For every transform code: which reference it beats on every corpus and metric."""
    rows, lines = data["rows"], []
    int4_bytes = rows["int4"]["bytes"] if "int4" in rows else None
    for name, row in rows.items():
        if not name.startswith("tc-"):
            continue
        for ref in ("q4_0", "nf4-64", "int4"):
            if ref not in rows:
                continue
            wins = [_better(model, m, row[c][m], rows[ref][c][m]) for c in h.CORPORA for m in METRICS[model]]
            lines.append(
                f"{name} ({row['bpw']:.3f} bpw{', <= int4 bytes' if int4_bytes and row['bytes'] <= int4_bytes else ''})"
                f" vs {ref} ({rows[ref]['bpw']:.3f} bpw): better on {sum(wins)}/{len(wins)} corpus x metric"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    out = ["# Codec research (benchmarks/codec_research.py)", "", results["note"], ""]
    for model, data in results["models"].items():
        metrics = METRICS[model]
        head = ["variant", "bytes", "bpw", "ratio"] + [f"{c} {m}" for c in h.CORPORA for m in metrics]
        head += ["rel MSE", "rel C-err", "encode s", "layout (n comps, bits)"]
        out += [f"## {model} ({data['shape'][0]} x {data['shape'][1]})", "", f"info: `{json.dumps(data['info'])}`", ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in data["rows"].items():
            cells = [name, str(row["bytes"]), f"{row['bpw']:.3f}", f"{32 / row['bpw']:.1f}x"]
            cells += [f"{row[c][m]:.4f}" for c in h.CORPORA for m in metrics]
            cells += [f"{row['rel_mse']:.4f}", f"{row['rel_C_err']:.4f}" if "rel_C_err" in row else "-"]
            cells += [str(row["encode_s"]), str(row.get("layout", "-")).replace(" ", "")]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", *[f"- {line}" for line in data["verdicts"]], ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["smollm2", "minilm"])
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--fresh", action="store_true", help="ignore cached per-variant results")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache_file = h.CACHE / "results.json"
    cache = {} if args.fresh or not cache_file.is_file() else json.loads(cache_file.read_text())
    results: dict[str, Any] = {
        "note": "KL / top-1: SmolLM2 vs original (lower KL, higher top-1 better); cos / nn10: MiniLM pooled cosine "
        "and top-10 neighbour overlap (higher better). bpw = 8 * stored bytes / (V * H), all scales, codebooks, "
        "basis (fp16) and mean included. rel MSE = |E - E'|^2 / |E - mean|^2; rel C-err = the same in the metric "
        "C = E[h h^T] of self-generated final hidden states. Rows named -rd use the library's rotation of each "
        "bit group and debiased component scales (-rN: metric ridge N, i.e. shrunk toward the identity); the other "
        "transform rows predate them and keep them off.",
        "machine": {"torch": torch.__version__, "threads": args.threads, "cpu": platform.machine()},
        "models": {},
    }
    for model in args.models:
        data = run_model(model, args.variants, cache, cache_file)
        data["verdicts"] = verdicts(model, data)
        results["models"][model] = data
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / "codec_research.json").write_text(text + "\n")
    (RESULTS / "codec_research.md").write_text(markdown(results).rstrip() + "\n")
    print(text)


if __name__ == "__main__":
    main()
