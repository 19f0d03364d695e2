"""Probe (not the issue #22 benchmark, which is benchmarks/bigvocab.py): Gemma-3-270m 8x as the CLI wrote it
against Q4_0 and NF4 of the same embedding, KL(original || compressed) per token and top-1 agreement on 4 x 255
tokens of Debian man pages per language (``embcompress.corpora``). Run after
``embcompress compress gemma3 --ratio 8 --no-distill --no-report -o /work/research/ck/gemma3-8x``; prints one line
per language. Measured 2026-12-02 (results quoted in the session note of issue #22): en 0.0290 vs Q4_0 0.1431,
ja 0.0887 vs 0.2548, de 0.0792 vs 0.1606, zh 0.0887 vs 0.2209.
"""

import glob
import sys
from pathlib import Path

import torch

import embcompress
from embcompress import LoadOptions, load_source
from embcompress.codec import reference_quantize
from embcompress.corpora import man_corpus

CORPUS = man_corpus()
torch.manual_seed(0)
_, teacher, tok = load_source("gemma3", LoadOptions())
teacher.eval()
student = embcompress.load(sys.argv[1] if len(sys.argv) > 1 else "gemma3-8x").eval()
W = teacher.get_input_embeddings().weight.detach().clone()
refs = {}
for name in ("q4_0", "nf4"):
    q, _ = reference_quantize(name, W)
    refs[name] = q


def run(model, ids):
    with torch.no_grad():
        return model(ids).logits.float().log_softmax(-1)


for lang in ("en", "ja", "de", "zh"):
    text = Path(glob.glob(f"{CORPUS}/{lang}/*")[0]).read_text()[:60000]
    ids = tok(text, return_tensors="pt")["input_ids"][:, :1025]
    ids = ids[:, 1:1025].reshape(4, 256)
    bos = torch.full((4, 1), tok.bos_token_id)
    ids = torch.cat([bos, ids[:, :255]], 1)
    t = run(teacher, ids)
    out = {}
    s = run(student, ids)
    out["8x"] = s
    for name, q in refs.items():
        with torch.no_grad():
            teacher.get_input_embeddings().weight.copy_(q)
        out[name] = run(teacher, ids)
        with torch.no_grad():
            teacher.get_input_embeddings().weight.copy_(W)
    line = []
    for k, s in out.items():
        kl = (t.exp() * (t - s)).sum(-1)[:, 1:].mean().item()
        top1 = (t.argmax(-1) == s.argmax(-1))[:, 1:].float().mean().item()
        line.append(f"{k} KL {kl:.4f} top1 {top1:.3f}")
    print(lang, " | ".join(line), flush=True)
