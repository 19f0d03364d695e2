"""Driver of the MiniLM transform-code research (issue #10): variants of ``minilm_tc.encode`` vs Q4_0 / int4.

    nice -n 19 python benchmarks/research/minilm_run.py VARIANT [VARIANT ...] [--screen]

``--screen`` measures cosine on every 4th batch (250 paragraphs per corpus) only.  Every variant's error is also
reported as plain relative MSE, relative J-metric error (J = the library's encoder metric: pooled-output
sensitivity on 32 x 126 random tokens, ``selftext.pooled_sensitivity``) and -- diagnostic only, never used by an
encoder -- the J error weighted by each corpus' token counts.  Results accumulate in
``/tmp/codec-cache/minilm-research.json`` (``minilm_table.py`` prints them as a table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
import codec_harness as h
import minilm_tc as tc

from embcompress import codec

OUT = h.CACHE / "minilm-research.json"
BUDGET = {
    "8x": lambda r, c: r * (c // 2 + 4),
    "8full": lambda r, c: r * c * 4 // 8,
    "11x": lambda r, c: int(2.9 * r * c / 8),
}


def metric_j(model: Any, tok: Any) -> torch.Tensor:
    path = h.CACHE / "minilm-J-random.pt"
    if path.is_file():
        return torch.load(path)
    from embcompress.selftext import pooled_sensitivity, random_ids

    ids = random_ids(tok, model.embeddings.word_embeddings.weight.shape[0], 32, 126, seed=0)
    m = pooled_sensitivity(model, ids)
    torch.save(m, path)
    return m


def parse(name: str) -> dict[str, Any]:
    """``tc:<rate>[:opt=value]...`` e.g. ``tc:8x:metric=J:rotate=1:block=16:bbits=4``; or a reference name."""
    parts = name.split(":")
    opts = dict(p.split("=") for p in parts[2:])
    return {"rate": parts[1], **opts}


def run_variant(name: str, e: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, int, dict]:
    if not name.startswith("tc:"):
        approx, nb = codec.REFERENCE_SCHEMES[name](e)
        return approx, nb, {}
    o = parse(name)
    rows, cols = e.shape
    budget = BUDGET[o["rate"]](rows, cols)
    metric = o.get("metric", "none")
    m = None if metric == "none" else ctx[metric]
    kw = {
        "rotate": o.get("rotate", "0") == "1",
        "block": int(o["block"]) if "block" in o else None,
        "block_bits": int(o.get("bbits", 0)),
        "ridge": float(o.get("ridge", 1e-3)),
        "max_bits": int(o.get("maxbits", 8)),
        "iters": int(o.get("iters", 2)),
        "debias": o.get("debias", "0") == "1",
        "basis8": o.get("b8", "0") == "1",
    }
    if "rw" in o:
        kw["row_weight"] = ctx["rw:" + o["rw"]]
    return tc.encode(e, budget, m, **kw)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--screen", action="store_true")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tok = h.load_minilm()
    e = model.embeddings.word_embeddings.weight.detach().clone()
    teachers = {c: h.enc_teacher(model, tok, c) for c in h.CORPORA}
    j = metric_j(model, tok)
    ctx: dict[str, Any] = {"J": j, "I": torch.eye(e.shape[1], dtype=torch.float64)}
    jn = j / (j.trace() / j.shape[0])
    for a in (0.1, 0.3, 0.5):
        ctx[f"J{a}"] = (1 - a) * jn + a * torch.eye(e.shape[1], dtype=torch.float64)
    real = h.CACHE / "minilm-J-real.pt"  # diagnostic only: J on held-out paragraphs 2000-2160 of each corpus
    if real.is_file():
        jr = torch.load(real)["J"]
        ctx["Jreal"] = jr
        jrn = jr / (jr.trace() / jr.shape[0])
        for a in (0.1, 0.3, 0.5):
            ctx[f"Jreal{a}"] = (1 - a) * jrn + a * torch.eye(e.shape[1], dtype=torch.float64)
    counts = {}
    for c, t in teachers.items():
        cnt = torch.zeros(e.shape[0])
        for b in t["batches"]:
            ids = b["input_ids"][b["attention_mask"].bool()]
            cnt.index_add_(0, ids, torch.ones(ids.numel()))
        counts[c] = cnt
    cache = {} if args.fresh or not OUT.is_file() else json.loads(OUT.read_text())
    xc = (e - e.mean(0)).double()
    base_j = float(((xc @ j) * xc).sum())
    for name in args.variants:
        key = name + (":screen" if args.screen else "")
        if key in cache:
            print(key, json.dumps(cache[key]))
            continue
        t0 = time.perf_counter()
        approx, nb, info = run_variant(name, e, ctx)
        row: dict[str, Any] = {
            "bytes": nb,
            "bpw": round(8 * nb / e.numel(), 4),
            "encode_s": round(time.perf_counter() - t0, 1),
        }
        row.update(info)
        d = (approx - e).double()
        row["rel_mse"] = float((d**2).sum() / (xc**2).sum())
        dj = ((d @ j) * d).sum(-1)
        row["rel_J"] = float(dj.sum() / base_j)
        for c in h.CORPORA:
            w = counts[c].double()
            row[f"fJ_{c}"] = float((w * dj).sum() / w.sum() / (base_j / e.shape[0]))
        for c, t in teachers.items():
            if args.screen:
                sub = {
                    "batches": t["batches"][::4],
                    "pooled": torch.cat([t["pooled"][i * 50 : (i + 1) * 50] for i in range(0, 20, 4)]),
                }
                emb = model.embeddings.word_embeddings.weight
                saved, emb.data = emb.data, approx.float().contiguous()
                try:
                    pooled = h.enc_pooled(model, sub["batches"])
                finally:
                    emb.data = saved
                row[c] = {"cos": float((pooled * sub["pooled"]).sum(-1).mean())}
            else:
                row[c] = h.enc_compare(model, t, approx)
        cache[key] = row
        OUT.write_text(json.dumps(cache, indent=1))
        print(key, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
