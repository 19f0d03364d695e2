"""Big vocabulary, many languages: Gemma-3-270m (262,144 x 640) compressed vs the quantizers people deploy.

Variants: ``embcompress compress`` at each ``--ratios`` without distillation and at each ``--distill-ratios``
with default (data-free) distillation, each run as a user runs it (``python -m embcompress compress``, the
CLI over :func:`embcompress.compress_checkpoint`, in a child process whose peak RSS and seconds are
measured), then reloaded with :func:`embcompress.load`; references: per-row int8 / int4, Q8_0, Q4_0 and NF4
of the embedding (the report's quantizers). Every variant is measured on each language of the man-page
corpus (:func:`embcompress.corpora.man_corpus`: English + de fr es ja zh ru pl) against the original:
KL(original || variant) per token and top-1 agreement on ``--max-tokens`` tokens per language, and their
average over languages; bits per weight of the embedding and whole-model bytes as stored.

    nice -n 5 python benchmarks/bigvocab.py                         # gemma3: 8x 11x 16x + 16x distilled
    python benchmarks/bigvocab.py --model tiny-folder --ratios 4 --distill-ratios "" --max-tokens 64

Prints JSON on stdout and writes benchmarks/results/bigvocab.{json,md} (``--name`` to change).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distill_common import WORK, machine, write_results

import embcompress
from embcompress import LoadOptions, load_source
from embcompress.codec import reference_quantize
from embcompress.corpora import MAN_LANGUAGES, man_corpus
from embcompress.progress import LoggingReporter
from embcompress.report import EvalOptions, ReportOptions, prepare_evaluation
from embcompress.report.behaviour import compare
from embcompress.report.builder import Evaluation, quantized_copy

logger = logging.getLogger("bigvocab")
REFERENCES = ("int8", "q8_0", "q4_0", "nf4", "int4")
METRICS = ("kl", "top1_agreement")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3", help="Model (alias, folder, .gguf); default gemma3.")
    parser.add_argument("--ratios", default="8,11,16", help="Ratios compressed without distillation.")
    parser.add_argument("--distill-ratios", default="16", help="Ratios compressed with default distillation.")
    parser.add_argument("--languages", default=",".join(MAN_LANGUAGES), help="Man-page languages.")
    parser.add_argument("--corpus", type=Path, help="A folder of one text subfolder per language (default: man pages).")
    parser.add_argument("--max-tokens", type=int, default=1024, help="Tokens scored per language.")
    parser.add_argument("--work", type=Path, default=WORK / "bigvocab", help="Where checkpoints are written.")
    parser.add_argument("--name", default="bigvocab", help="Results file name.")
    parser.add_argument("--max-minutes", type=float, help="Distillation budget (default: compress's own).")
    return parser.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_compress(model: str, ratio: float, distill: bool, out: Path, minutes: float | None) -> dict[str, Any]:
    """``embcompress compress`` in a child process: seconds and its own peak RSS (from ``wait4``)."""
    args = [sys.executable, "-m", "embcompress", "compress", model, "--ratio", f"{ratio:g}", "--no-report"]
    args += ["--distill" if distill else "--no-distill", "-o", str(out), "--overwrite", "--json"]
    args += ["--max-minutes", f"{minutes:g}"] if distill and minutes is not None else []
    log = out.parent / f"{out.name}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"compress --ratio {ratio:g} failed (exit {child.returncode}); see {log}")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def evaluations(teacher: Any, tokenizer: Any, corpus: Path, languages: list[str], max_tokens: int) -> dict:
    options = ReportOptions(eval=EvalOptions(max_tokens=max_tokens), speed=False)
    out: dict[str, Evaluation] = {}
    for lang in languages:
        logger.info("teacher outputs on %s", lang)
        out[lang] = prepare_evaluation(teacher, tokenizer, corpus / lang, options, reporter=LoggingReporter())
    return out


def measure(model: Any, evals: dict[str, Evaluation]) -> dict[str, Any]:
    """KL and top-1 agreement per language and their average."""
    per = {}
    for lang, evaluation in evals.items():
        assert evaluation.teacher is not None
        behaviour = compare(model, evaluation.teacher)
        per[lang] = {m: behaviour[m] for m in METRICS} | {"tokens": behaviour["tokens"]}
    average = {m: sum(v[m] for v in per.values()) / len(per) for m in METRICS}
    return {"languages": per, "average": average}


def reference_variants(teacher: Any, evals: dict[str, Evaluation], dense_bytes: int) -> list[dict[str, Any]]:
    weight = teacher.get_input_embeddings().weight
    rows, cols = weight.shape
    out = []
    for scheme in REFERENCES:
        logger.info("reference %s", scheme)
        started = time.perf_counter()
        nbytes = reference_quantize(scheme, weight[:1].detach())[1] * rows
        model = quantized_copy(teacher, scheme)
        seconds = time.perf_counter() - started
        out.append(
            {
                "name": scheme,
                "bits_per_weight": 8 * nbytes / (rows * cols),
                "embedding_bytes": nbytes,
                "model_bytes": dense_bytes - rows * cols * 4 + nbytes,
                "quantize_seconds": seconds,
                **measure(model, evals),
            }
        )
        del model
    return out


def compressed_variant(
    model_name: str, ratio: float, distill: bool, work: Path, evals: dict, minutes: float | None = None
) -> dict[str, Any]:
    name = f"{ratio:g}x" + (" distilled" if distill else "")
    out = work / f"r{ratio:g}{'-distilled' if distill else ''}"
    logger.info("compress %s", name)
    run = run_compress(model_name, ratio, distill, out, minutes)
    model = embcompress.load(out)  # as a user loads the written checkpoint
    emb = model.get_input_embeddings()
    rows, cols = emb.num_embeddings, emb.embedding_dim
    embedding_bytes = sum(int(t.numel() * t.element_size()) for t in emb.state_dict().values())
    result = {
        "name": name,
        "ratio": ratio,
        "distilled": distill,
        "bits_per_weight": 8 * embedding_bytes / (rows * cols),
        "embedding_bytes": embedding_bytes,
        "model_bytes": folder_bytes(out),
        "compress_seconds": run["seconds"],
        "compress_peak_rss_bytes": run["peak_rss_bytes"],
        **measure(model, evals),
    }
    del model
    return result


def markdown(data: dict[str, Any]) -> str:
    langs = data["languages"]
    lines = [
        f"# Big vocabulary: {data['model']} ({data['vocab']} x {data['hidden']}), {len(langs)} languages",
        "",
        f"KL(original || variant) per token / top-1 agreement on {data['max_tokens']} tokens per language "
        f"({data['corpus']}; `benchmarks/bigvocab.py`). Lower KL and higher top-1 are better. References: "
        "compress seconds are the quantizer's, not a command's.",
        "",
        "| variant | bits/weight | model MB | " + " | ".join(langs) + " | average | compress s | peak RSS GB |",
        "|---|---|---|" + "---|" * (len(langs) + 3),
    ]
    for row in data["variants"]:
        cells = [
            f"{row['languages'][lang]['kl']:.4f} / {row['languages'][lang]['top1_agreement']:.3f}" for lang in langs
        ]
        avg = f"{row['average']['kl']:.4f} / {row['average']['top1_agreement']:.3f}"
        seconds = row.get("compress_seconds", row.get("quantize_seconds"))
        rss = row.get("compress_peak_rss_bytes")
        lines.append(
            f"| {row['name']} | {row['bits_per_weight']:.2f} | {row['model_bytes'] / 1e6:.0f} | "
            + " | ".join(cells)
            + f" | {avg} | {'-' if seconds is None else f'{seconds:.0f}'} | "
            + f"{'-' if not rss else f'{rss / 2**30:.2f}'} |"
        )
    lines += ["", f"Machine: {data['machine']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    languages = [lang for lang in args.languages.split(",") if lang]
    corpus = args.corpus or man_corpus(languages)
    languages = [lang for lang in languages if (corpus / lang).is_dir()]
    args.work.mkdir(parents=True, exist_ok=True)
    _, teacher, tokenizer = load_source(args.model, LoadOptions())
    weight = teacher.get_input_embeddings().weight
    rows, cols = weight.shape
    dense_bytes = sum(int(p.numel() * p.element_size()) for p in {id(p): p for p in teacher.parameters()}.values())
    evals = evaluations(teacher, tokenizer, corpus, languages, args.max_tokens)
    variants = reference_variants(teacher, evals, dense_bytes)
    for ratio in _floats(args.ratios):
        variants.append(compressed_variant(args.model, ratio, False, args.work, evals))
    for ratio in _floats(args.distill_ratios):
        variants.append(compressed_variant(args.model, ratio, True, args.work, evals, args.max_minutes))
    data = {
        "model": args.model,
        "vocab": rows,
        "hidden": cols,
        "dense_model_bytes": dense_bytes,
        "languages": languages,
        "corpus": str(corpus),
        "max_tokens": args.max_tokens,
        "variants": variants,
        "machine": machine(),
    }
    for row in variants:
        assert all(math.isfinite(row["average"][m]) for m in METRICS), row["name"]
    write_results(args.name, data, markdown(data))
    return data


if __name__ == "__main__":
    main()
