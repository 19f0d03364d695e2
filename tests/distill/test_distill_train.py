"""The distillation loop on tiny real models: quality improves, only chosen parameters train,
resume is exact, NaN stops the run, the teacher cache is equivalent, the output reloads."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import embcompress
from embcompress.distill import (
    DistillConfig,
    DistillDiverged,
    Distiller,
    DistillInterrupted,
    LossWeights,
    distill_checkpoint,
)
from embcompress.distill.batches import CorpusBatches
from embcompress.distill.model_utils import param_groups, select_trainable
from embcompress.distill.state import LAST, STATE_JSON, TRAINABLE
from embcompress.distill.trainer import LOG_NAME, make_accelerator
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.kinds import ModelKind
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from helpers.distill import build_pair, make_tokenizer, single_thread, write_corpus
from helpers.models import make_tiny

FAST = {"batch_size": 4, "seq_len": 16, "eval_windows": 8, "lr": 1e-2}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


pytestmark = pytest.mark.usefixtures(single_thread.__name__)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def is_factor(key: str) -> bool:
    return any(key.endswith(s) for s in (".codes", ".basis", ".offset"))


@pytest.mark.parametrize(("name", "metric", "better"), [("llama-tied", "kl", "lower"), ("bert-mlm", "kl", "lower")])
def test_lm_loss_decreases_and_heldout_kl_improves(
    tmp_path: Path, corpus: Path, name: str, metric: str, better: str
) -> None:
    teacher, student = build_pair(tmp_path, name)
    cfg = DistillConfig(steps=30, eval_every=10, **FAST)
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus, keep_state=True)
    assert result.after[metric] < 0.5 * result.before[metric]
    steps = [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["event"] == "step"]
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    summary = json.loads((tmp_path / "out" / "embcompress.json").read_text())
    assert summary["distill"]["after"][metric] == pytest.approx(result.after[metric])
    assert summary["modules"] and summary["distill"]["eval_split"] == "heldout"


def test_encoder_pooled_cosine_improves(tmp_path: Path, corpus: Path) -> None:
    teacher, student = build_pair(tmp_path, "bert-encoder", rank=2)
    cfg = DistillConfig(steps=30, eval_every=10, **FAST)
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    assert result.kind == "encoder"
    assert result.after["cosine"] > result.before["cosine"]
    assert result.after["distance"] < 0.85 * result.before["distance"]


@pytest.mark.parametrize(("method", "options"), [("grouped", {"buckets": [30, "rest"]}), ("nonlinear", {"hidden": 8})])
def test_structured_students_train_with_the_reconstruction_term(
    tmp_path: Path, corpus: Path, method: str, options: dict[str, object]
) -> None:
    counts = torch.arange(96, 0, -1).float()
    teacher, student = build_pair(
        tmp_path, "llama-tied", rank=6, method=method, method_options=options, row_weights=counts
    )
    cfg = DistillConfig(steps=20, eval_every=10, weights=LossWeights(kl=0.0, recon=1.0), **FAST)
    distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    steps = [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]
    assert all(r["loss_recon"] > 0 for r in steps if r["event"] == "step")
    before, after = weights(student), weights(tmp_path / "out")
    # dense rows are exact (no reconstruction gradient); every low-rank factor and decoder weight moves
    factors = [k for k in before if "embed_tokens" in k and any(n in k for n in ("codes", "basis", "dec_"))]
    assert len(factors) >= 2
    for key in factors:
        assert not torch.equal(before[key], after[key]), key
    assert type(embcompress.load(tmp_path / "out").get_input_embeddings()).__name__ != "Embedding"


def test_only_factors_train_and_output_reloads_with_same_logits(tmp_path: Path, corpus: Path) -> None:
    teacher, student = build_pair(tmp_path, "llama-untied")
    cfg = DistillConfig(steps=6, eval_every=3, **FAST)
    distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    before, after = weights(student), weights(tmp_path / "out")
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(is_factor(k) for k in changed)
    assert any("lm_head" in k for k in changed) and any("embed_tokens" in k for k in changed)
    strict = embcompress.load(tmp_path / "out")
    plain = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert isinstance(plain.lm_head, FactorizedLinear) and isinstance(plain.model.embed_tokens, FactorizedEmbedding)
    ids = torch.randint(7, 60, (2, 10))
    with torch.no_grad():
        assert torch.allclose(strict(ids).logits, plain(ids).logits, atol=1e-6)
    assert (tmp_path / "out" / "tokenizer.json").is_file() and not (tmp_path / "out.distill").exists()


@pytest.mark.parametrize(
    ("mode", "trains_norms", "trains_layers"), [("factors+norms", True, False), ("all", True, True)]
)
def test_train_modes(tmp_path: Path, corpus: Path, mode: str, trains_norms: bool, trains_layers: bool) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied")
    cfg = DistillConfig(steps=4, eval_every=2, train=mode, **FAST)
    distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    before, after = weights(student), weights(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("norm" in k for k in changed) == trains_norms
    assert any(k.endswith("proj.weight") for k in changed) == trains_layers


class InterruptAt:
    """A reporter that presses Ctrl-C (a real SIGINT) after step ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[None]:
        yield

    def advance(self, steps: int = 1, **metrics: float) -> None:
        self.seen += steps
        if self.seen == self.at:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("data_free", [False, True])
def test_ctrl_c_checkpoints_and_resume_equals_a_straight_run(tmp_path: Path, corpus: Path, data_free: bool) -> None:
    teacher, student = build_pair(tmp_path, "bert-mlm" if not data_free else "llama-tied")
    cfg = DistillConfig(steps=6, eval_every=2, **{**FAST, "seq_len": 8})
    data = None if data_free else corpus
    straight = distill_checkpoint(student, str(teacher), tmp_path / "a", cfg, data=data)
    with pytest.raises(DistillInterrupted, match="interrupted at step 3"):
        distill_checkpoint(student, str(teacher), tmp_path / "b", cfg, data=data, reporter=InterruptAt(3))
    state = json.loads((tmp_path / "b.distill" / LAST / STATE_JSON).read_text())
    assert state["step"] == 3 and not (tmp_path / "b").exists()
    resumed = distill_checkpoint(student, str(teacher), tmp_path / "b", cfg, data=data, resume=True)
    assert resumed.steps == straight.steps == 6
    assert resumed.history == straight.history
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    recorded = json.loads((tmp_path / "a" / "embcompress.json").read_text())["distill"]["config"]
    assert recorded["data_free"] is data_free and cfg.data_free is False  # the caller's config is not changed


def _distiller(tmp_path: Path, corpus: Path, cfg: DistillConfig, **options: object) -> Distiller:
    teacher_dir, student_dir = build_pair(tmp_path, "llama-tied", **options)
    tok = make_tokenizer("causal")
    batches = CorpusBatches(corpus, tok, cfg, per_document=False)
    held, split = batches.heldout(cfg.eval_windows)
    teacher = transformers.LlamaForCausalLM.from_pretrained(str(teacher_dir))
    return Distiller(
        embcompress.load(student_dir), teacher, tok, cfg, ModelKind.CAUSAL_LM, batches, held, split,
        make_accelerator("cpu"), tmp_path / "state",
    )  # fmt: skip


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, corpus: Path) -> None:
    cfg = DistillConfig(steps=10, eval_every=100, checkpoint_every=2, **FAST)
    distiller = _distiller(tmp_path, corpus, cfg)
    calls = {"n": 0}

    def poison(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                return output * float("nan")
        return output

    distiller.student.model.embed_tokens.register_forward_hook(poison)
    with pytest.raises(DistillDiverged, match=r"became nan at step 5.*last good checkpoint \(step 4\)"):
        distiller.train()
    saved = load_file(str(tmp_path / "state" / LAST / TRAINABLE))
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert json.loads((tmp_path / "state" / LAST / STATE_JSON).read_text())["step"] == 4
    assert all(torch.isfinite(p).all() for p in distiller.params.values())


def test_transform_codes_train_at_their_modules_fraction_of_the_learning_rate(tmp_path: Path, corpus: Path) -> None:
    cfg = DistillConfig(steps=2, eval_every=100, warmup=0.0, train="all", **FAST)
    distiller = _distiller(tmp_path, corpus, cfg, method="transform", rank=None, ratio=4.0, factor_dtype="float32")
    embedding = distiller.student.get_input_embeddings()
    assert type(embedding).__name__ == "TransformCodedEmbedding" and embedding.lr_scale == 0.1
    distiller.train()
    groups = {group["lr_scale"]: group for group in distiller.optimizer.param_groups}
    assert set(groups) == {0.1, 1.0}
    assert {id(p) for p in groups[0.1]["params"]} == {id(p) for p in embedding.parameters() if p.requires_grad}
    assert groups[0.1]["lr"] == pytest.approx(0.1 * groups[1.0]["lr"]) and groups[1.0]["lr"] > 0


def float_factor_dtypes(tensors: dict[str, torch.Tensor]) -> set[torch.dtype]:
    return {t.dtype for k, t in tensors.items() if "embed_tokens" in k and t.dtype != torch.uint8}


def test_a_factorized_heads_bias_trains_at_its_sources_scale_and_norms_at_one() -> None:
    model = make_tiny("bert-mlm")
    factorize_model(model, FactorizeOptions(method="transform", ratio=3.0, factor_dtype="float32"))
    head = model.get_output_embeddings()
    assert isinstance(head, FactorizedLinear) and head.bias is not None
    trainable = dict(model.named_parameters())
    select_trainable(model, "factors+norms")
    groups = {group["lr_scale"]: {id(p) for p in group["params"]} for group in param_groups(model)}
    assert id(head.bias) in groups[0.1] and id(model.get_input_embeddings().comp_scale) in groups[0.1]
    norms = {id(p) for name, p in trainable.items() if "LayerNorm" in name and p.requires_grad}
    assert norms and norms <= groups[1.0]


def test_a_float16_transform_student_trains_in_float32_and_is_stored_back_in_float16(
    tmp_path: Path, corpus: Path
) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied", method="transform", rank=None, ratio=4.0)
    assert float_factor_dtypes(weights(student)) == {torch.float16}
    cfg = DistillConfig(steps=10, eval_every=5, **{**FAST, "lr": 3e-3})  # float16 Adam states: NaN at step 2
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    assert result.stop_reason == "budget" and result.after["kl"] < 0.8 * result.before["kl"]
    after = weights(tmp_path / "out")
    assert float_factor_dtypes(after) == {torch.float16}
    changed = [k for k, t in weights(student).items() if not torch.equal(t, after[k])]
    assert any(k.endswith("comp_scale") for k in changed) and not any("codes_" in k for k in changed)
    specs = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["modules"]
    assert {spec["factor_dtype"] for spec in specs} == {"float16"}


def test_huge_lr_divergence_is_caught(tmp_path: Path, corpus: Path) -> None:
    cfg = DistillConfig(steps=20, eval_every=100, checkpoint_every=5, max_grad_norm=0.0, **{**FAST, "lr": 1e30})
    with pytest.raises(DistillDiverged, match="last good checkpoint"):
        _distiller(tmp_path, corpus, cfg).train()


def test_teacher_cache_hits_on_later_epochs_and_matches_full_kl(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "small.txt", 8)
    teacher, student = build_pair(tmp_path, "llama-tied")
    cfg = DistillConfig(steps=12, eval_every=6, cache_top_k=96, **FAST)
    cached = distill_checkpoint(student, str(teacher), tmp_path / "c", cfg, data=corpus, cache_dir=tmp_path / "cache")
    distill_checkpoint(student, str(teacher), tmp_path / "p", cfg, data=corpus)
    assert cached.cache["hits"] > 0 and cached.cache["misses"] > 0
    a, b = weights(tmp_path / "c"), weights(tmp_path / "p")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    changed = DistillConfig(steps=2, eval_every=6, cache_top_k=8, **FAST)
    with pytest.raises(embcompress.EmbcompressError, match="different settings"):
        distill_checkpoint(student, str(teacher), tmp_path / "d", changed, data=corpus, cache_dir=tmp_path / "cache")


def test_early_stopping_keeps_the_best_parameters(tmp_path: Path, corpus: Path) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied")
    cfg = DistillConfig(steps=40, eval_every=1, patience=2, **{**FAST, "lr": 3.0})
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus, keep_state=True)
    if result.stop_reason == "early_stop":
        assert result.steps < 40
    best = min(h["kl"] for h in result.history)
    assert result.after["kl"] == pytest.approx(best)
    reloaded = json.loads((tmp_path / "out" / "embcompress.json").read_text())["distill"]
    assert reloaded["best_step"] == result.best_step


def test_token_budget_stops_the_run_and_the_schedule_follows_it(tmp_path: Path, corpus: Path) -> None:
    teacher, student = build_pair(tmp_path, "llama-tied")
    cfg = DistillConfig(max_tokens=4 * 16 * 5, eval_every=100, **FAST)
    result = distill_checkpoint(student, str(teacher), tmp_path / "out", cfg, data=corpus)
    assert result.steps == 5 and result.tokens == 4 * 16 * 5 and result.stop_reason == "budget"
    records = [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["event"] == "step"]
    assert lrs[-1] < lrs[1] <= cfg.lr
