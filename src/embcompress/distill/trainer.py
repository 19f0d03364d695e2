"""The distillation loop: AdamW + warmup/cosine, grad accumulation, accelerate, eval, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast
from torch import nn

from ..errors import EmbcompressError
from ..kinds import ModelKind
from ..modules import CompressedEmbedding
from ..progress import LoggingReporter, Reporter
from ..sentence import pipeline_of
from . import losses
from .batches import Batch, derive_seed
from .cache import TeacherCache
from .config import DistillConfig
from .model_utils import (
    LOGITS_BYTES,
    HeadSplit,
    Outputs,
    factorized_sources,
    forward,
    forward_split,
    freeze,
    head_logits,
    head_split,
    param_groups,
    select_trainable,
)
from .state import check_resumable, load_state, save_state

logger = logging.getLogger(__name__)
LOG_NAME = "distill_log.jsonl"


class DistillDiverged(EmbcompressError):
    """The loss became NaN/inf; the last good checkpoint was kept."""


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; a checkpoint was written first."""


class BatchSource(Protocol):
    def iterate(self, skip: int = 0) -> Iterator[Batch]: ...


def make_accelerator(device: str | None = None) -> Accelerator:
    """CUDA with bf16 (fp16 without bf16 support) when available, else CPU fp32."""
    cpu = device == "cpu" or not torch.cuda.is_available()
    precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=[ddp])


def lr_factor(progress: float, warmup: float, min_ratio: float, floor: float) -> float:
    """Linear warmup over the first ``warmup`` of the budget, then cosine to ``min_ratio``."""
    if warmup > 0 and progress < warmup:
        return min(1.0, max(progress, floor) / warmup)
    span = max(1e-12, 1.0 - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))
    return min_ratio + (1.0 - min_ratio) * cosine


def mask_tokens(
    ids: torch.Tensor, attention: torch.Tensor, mask_id: int, prob: float, seed: int, special: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a seeded ``prob`` share of real, non-special tokens by ``mask_id``."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand(ids.shape, generator=gen)
    chosen = (draw < prob) & attention.bool() & ~torch.isin(ids, special)
    masked = ids.clone()
    masked[chosen] = mask_id
    return masked, chosen


@dataclass
class DistillResult:
    """Outcome of a run (the student holds the best parameters)."""

    kind: str
    steps: int
    tokens: int
    seconds: float
    stop_reason: str
    before: dict[str, float]
    after: dict[str, float]
    best_step: int
    eval_split: str
    trainable: list[str]
    trainable_params: int
    data_digest: str
    params_digest: str = ""
    cache: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The JSON-lines training log of the run (written into checkpoints beside the weights).
    log: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The fields but ``log``, plus ``tokens_per_second``; seconds and tokens/s rounded to 2 decimals."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "log"}
        return {**data, "seconds": round(self.seconds, 2), "tokens_per_second": round(self.tokens_per_second, 2)}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of named tensors (sorted by name): equal digests mean bit-identical parameters."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


PRIMARY = {ModelKind.CAUSAL_LM: "kl", ModelKind.MASKED_LM: "kl", ModelKind.ENCODER: "distance"}
#: The run's progress saved in a training checkpoint and restored by ``--resume``.
STATE_KEYS = ("step", "tokens", "elapsed", "best_metric", "best_step", "bad_evals", "before", "history")


class Distiller:
    """One distillation run of ``student`` towards ``teacher`` (see :class:`DistillConfig`)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        tokenizer: Any,
        config: DistillConfig,
        kind: str,
        train_batches: BatchSource,
        eval_batches: list[Batch],
        eval_split: str,
        accelerator: Accelerator,
        state_dir: Path,
        resume: bool = False,
        reporter: Reporter | None = None,
        cache: TeacherCache | None = None,
    ) -> None:
        self.cfg, self.kind, self.acc = config, kind, accelerator
        self.weights = config.weights.resolved(kind)
        self.tokenizer, self.state_dir, self.reporter = tokenizer, state_dir, reporter or LoggingReporter()
        self.train_batches, self.eval_batches = train_batches, eval_batches
        self.eval_split, self.cache = eval_split, cache
        self.trainable = select_trainable(student, config.train)
        self.teacher = freeze(teacher).to(accelerator.device)
        self.pipeline = pipeline_of(teacher)  # sentence embeddings as the teacher's pipeline computes them
        student.eval()  # no dropout: the student must match a deterministic teacher
        optimizer = torch.optim.AdamW(param_groups(student), lr=config.lr, weight_decay=config.weight_decay)
        self.model, self.optimizer = accelerator.prepare(student, optimizer)
        self.student = accelerator.unwrap_model(self.model)
        self.params = {n: p for n, p in self.student.named_parameters() if n in set(self.trainable)}
        self.recon_pairs = self._recon_pairs()
        self.split = self._head_splits()
        self.special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.before: dict[str, float] = {}
        self.best: dict[str, torch.Tensor] | None = None
        self.best_metric = math.inf
        self.best_step = 0
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self.digest = hashlib.blake2b(digest_size=8)
        self._interrupt = False
        self.saved_step = 0
        self._shown = 0
        self.resumed = resume
        if resume:
            self._restore()

    # -- setup ------------------------------------------------------------------------------------
    def _head_splits(self) -> tuple[HeadSplit, HeadSplit] | None:
        """Student and teacher split at their LM heads when a batch's logits are large (a 262k vocabulary):
        the KL is then computed a chunk of positions at a time. One process only (the split bypasses the
        DDP wrapper), no teacher cache (it stores top-k logits) and no plain LM term (it needs all logits)."""
        vocab = int(self.student.get_input_embeddings().num_embeddings)
        if self.cfg.batch_size * self.cfg.seq_len * vocab * 4 <= LOGITS_BYTES:
            return None
        if self.acc.num_processes > 1 or self.cache is not None or self.weights["lm"] > 0:
            return None
        student, teacher = head_split(self.student, self.kind), head_split(self.teacher, self.kind)
        if student is None or teacher is None:
            return None
        logger.info("vocabulary of %d: distilling through the LM head a chunk of positions at a time", vocab)
        return student, teacher

    @property
    def _chunk(self) -> int:
        vocab = int(self.student.get_input_embeddings().num_embeddings)
        return max(1, LOGITS_BYTES // (4 * vocab))

    def _recon_pairs(self) -> list[tuple[CompressedEmbedding, torch.Tensor]]:
        if self.weights["recon"] <= 0:
            return []
        dense = {"input": self.teacher.get_input_embeddings(), "output": self.teacher.get_output_embeddings()}
        return [(module, dense[role].weight.detach()) for role, module in factorized_sources(self.student)]

    def _restore(self) -> None:
        trainable, optim, best, info = load_state(self.state_dir)
        check_resumable(info, self.cfg.to_dict(), self.acc.num_processes)
        missing = sorted(set(self.params) - set(trainable))
        if missing:
            raise EmbcompressError(f"--resume: checkpoint lacks trainable tensor(s) {missing[:3]}; same --train?")
        self._load_params(trainable)
        try:
            self.optimizer.load_state_dict(optim)
        except ValueError as exc:  # e.g. a state saved before transform codes had their own parameter group
            raise EmbcompressError(
                f"--resume: the saved optimizer state does not fit this run ({exc}); start again without --resume"
            ) from None
        self.best = best
        for key in STATE_KEYS:
            setattr(self, key, info[key])
        self.saved_step = self.step
        logger.info("resumed from step %d (%s)", self.step, self.state_dir)

    @torch.no_grad()
    def _load_params(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``tensors`` (by name) into the trainable parameters."""
        for name, param in self.params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))

    # -- teacher targets --------------------------------------------------------------------------
    def _want_hidden(self) -> bool:
        return self.weights["hidden"] > 0 or (self.weights["pooled"] > 0 and self.kind != "encoder")

    @torch.no_grad()
    def _teacher(self, ids: torch.Tensor, mask: torch.Tensor, key: int) -> dict[str, torch.Tensor]:
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            return {k: v.to(self.acc.device) for k, v in cached.items()}
        with self.acc.autocast():
            if self.split is not None:
                out = forward_split(self.split[1], ids, mask, self.cfg.hidden_layers, self._want_hidden())
            else:
                out = forward(self.teacher, ids, mask, self.kind, self.cfg.hidden_layers, self._want_hidden())
        targets: dict[str, torch.Tensor] = {f"hidden.{i}": h.float() for i, h in enumerate(out.hidden)}
        if out.head_input is not None:
            targets["head_input"] = out.head_input
        if out.last_hidden is not None:
            targets["last_hidden"] = out.last_hidden.float()
        if out.logits is not None and (self.weights["kl"] > 0 or self.weights["lm"] > 0):
            if self.cache is not None:
                values, indices = out.logits.float().topk(self.cfg.cache_top_k, dim=-1)
                targets.update(top_values=values, top_indices=indices.to(torch.int32))
            else:
                targets["logits"] = out.logits.float()
        if self.cache is not None:
            self.cache.put(key, targets)
        return targets

    # -- losses -----------------------------------------------------------------------------------
    def _inputs(self, batch: Batch, key_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ids, mask, chosen = batch.input_ids, batch.attention_mask, None
        if self.kind == ModelKind.MASKED_LM and self.tokenizer.mask_token_id is not None:
            ids, chosen = mask_tokens(
                ids, mask, self.tokenizer.mask_token_id, self.cfg.mlm_probability, key_seed, self.special
            )
        dev = self.acc.device
        return ids.to(dev), mask.to(dev), chosen.to(dev) if chosen is not None else None

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the active loss terms on one micro-batch, and each term's value."""
        seed = derive_seed(self.cfg.seed, self.acc.process_index, batch.key, 3)
        ids, mask, chosen = self._inputs(batch, seed)
        target = self._teacher(ids, mask, batch.key)
        with self.acc.autocast():
            if self.split is not None:
                out = forward_split(self.split[0], ids, mask, self.cfg.hidden_layers, self._want_hidden())
            else:
                out = forward(self.model, ids, mask, self.kind, self.cfg.hidden_layers, self._want_hidden())
        terms = self._terms(out, target, ids, mask, batch, chosen, seed)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}  # type: ignore[return-value]

    def _terms(
        self,
        out: Outputs,
        target: dict[str, torch.Tensor],
        ids: torch.Tensor,
        mask: torch.Tensor,
        batch: Batch,
        chosen: torch.Tensor | None,
        seed: int,
    ) -> dict[str, torch.Tensor]:
        w, cfg, terms = self.weights, self.cfg, {}
        if w["kl"] > 0 and self.split is not None and out.head_input is not None:
            s_head, t_head = (functools.partial(head_logits, split) for split in self.split)
            terms["kl"] = losses.kl_chunked(
                out.head_input, target["head_input"], s_head, t_head, mask, cfg.temperature, self._chunk
            )
        elif w["kl"] > 0 and out.logits is not None:
            if "top_values" in target:
                terms["kl"] = losses.kl_topk(
                    out.logits, target["top_values"], target["top_indices"], mask, cfg.temperature
                )
            else:
                terms["kl"] = losses.kl_logits(out.logits, target["logits"], mask, cfg.temperature)
        if w["hidden"] > 0:
            parts = [
                losses.hidden_distance(h, target[f"hidden.{i}"], mask, cfg.hidden_loss)
                for i, h in enumerate(out.hidden)
            ]
            terms["hidden"] = torch.stack(parts).mean()
        if w["pooled"] > 0 and out.last_hidden is not None:
            cos = losses.pooled_cosine(out.last_hidden, target["last_hidden"], mask, self.pipeline)
            terms["pooled"] = (1.0 - cos).mean()
        if w["recon"] > 0 and self.recon_pairs:
            terms["recon"] = self._reconstruction(ids, seed)
        if w["lm"] > 0 and out.logits is not None:
            if self.kind == ModelKind.CAUSAL_LM:
                terms["lm"] = losses.causal_lm(out.logits, ids, mask)
            elif chosen is not None:
                terms["lm"] = losses.masked_lm(out.logits, batch.input_ids.to(ids.device), chosen)
        if not terms:
            raise EmbcompressError(f"no active loss term for a {self.kind} model with weights {w}")
        return terms

    def _reconstruction(self, ids: torch.Tensor, seed: int) -> torch.Tensor:
        """Rows of the batch's tokens plus 256 random rows, against the teacher's dense rows."""
        gen = torch.Generator().manual_seed(seed)
        vocab = self.recon_pairs[0][1].shape[0]
        rows = torch.unique(torch.cat([ids.flatten().cpu(), torch.randint(vocab, (256,), generator=gen)]))
        rows = rows.to(self.acc.device)
        parts = [losses.reconstruction(m.rows(rows), dense[rows]) for m, dense in self.recon_pairs]
        return torch.stack(parts).mean()

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out agreement with the teacher (computed identically on every process)."""
        sums: defaultdict[str, float] = defaultdict(float)
        for index, batch in enumerate(self.eval_batches):
            ids, mask, chosen = self._inputs(batch, derive_seed(self.cfg.seed, index, 4))
            if self.split is not None:
                self._evaluate_split(ids, mask, sums)
                continue
            with self.acc.autocast():
                t = forward(self.teacher, ids, mask, self.kind, (), False)
                s = forward(self.student, ids, mask, self.kind, (), False)
            if self.kind == ModelKind.ENCODER:
                cos = losses.pooled_cosine(s.last_hidden, t.last_hidden, mask, self.pipeline)  # type: ignore[arg-type]
                sums["cosine"] += float(cos.sum())
                sums["n"] += ids.shape[0]
                continue
            n = float(mask.sum())
            sums["kl"] += float(losses.kl_logits(s.logits, t.logits, mask, 1.0) * n)  # type: ignore[arg-type]
            sums["n"] += n
            if self.kind == ModelKind.CAUSAL_LM:
                pairs = float(mask[:, 1:].sum())
                sums["ce_student"] += float(losses.causal_lm(s.logits, ids, mask) * pairs)  # type: ignore[arg-type]
                sums["ce_teacher"] += float(losses.causal_lm(t.logits, ids, mask) * pairs)  # type: ignore[arg-type]
                sums["pairs"] += pairs
            elif chosen is not None:
                agree = (s.logits.argmax(-1) == t.logits.argmax(-1)) & chosen  # type: ignore[union-attr]
                sums["agree"] += float(agree.sum())
                sums["masked"] += float(chosen.sum())
        return self._metrics(sums)

    def _evaluate_split(self, ids: torch.Tensor, mask: torch.Tensor, sums: defaultdict[str, float]) -> None:
        """:meth:`evaluate`'s sums for one causal-LM batch through the split heads, a chunk at a time."""
        assert self.split is not None
        with self.acc.autocast():
            s, t = (forward_split(split, ids, mask, (), False) for split in self.split)
        s_head, t_head = (functools.partial(head_logits, split) for split in self.split)
        assert s.head_input is not None and t.head_input is not None
        n, pairs = float(mask.sum()), float(mask[:, 1:].sum())
        kl = losses.kl_chunked(s.head_input, t.head_input, s_head, t_head, mask, 1.0, self._chunk)
        sums["kl"] += float(kl) * n
        sums["n"] += n
        sums["ce_student"] += float(losses.causal_lm_chunked(s.head_input, s_head, ids, mask, self._chunk)) * pairs
        sums["ce_teacher"] += float(losses.causal_lm_chunked(t.head_input, t_head, ids, mask, self._chunk)) * pairs
        sums["pairs"] += pairs

    def _metrics(self, sums: dict[str, float]) -> dict[str, float]:
        if self.kind == ModelKind.ENCODER:
            cos = sums["cosine"] / sums["n"]
            return {"cosine": cos, "distance": 1.0 - cos}
        metrics = {"kl": sums["kl"] / sums["n"]}
        if self.kind == ModelKind.CAUSAL_LM:
            ce_s, ce_t = sums["ce_student"] / sums["pairs"], sums["ce_teacher"] / sums["pairs"]
            metrics.update(ppl_student=math.exp(ce_s), ppl_teacher=math.exp(ce_t), ppl_ratio=math.exp(ce_s - ce_t))
        elif sums.get("masked"):
            metrics["top1_agreement"] = sums["agree"] / sums["masked"]
        return metrics

    def _primary(self, metrics: dict[str, float]) -> float:
        value = torch.tensor([metrics[PRIMARY[self.kind]]], device=self.acc.device, dtype=torch.float64)
        if self.acc.num_processes > 1:
            value = broadcast(value, from_process=0)
        return float(value.item())

    def _record_eval(self, metrics: dict[str, float]) -> bool:
        """Track the best parameters; return True when early stopping should end the run."""
        primary = self._primary(metrics)
        self._log("eval", tokens=self.tokens, **metrics)
        self.history.append({"step": self.step, **metrics})
        if primary < self.best_metric - 1e-9 or self.best is None:
            self.best_metric, self.best_step, self.bad_evals = primary, self.step, 0
            self.best = {n: p.detach().cpu().clone() for n, p in self.params.items()}
            return False
        self.bad_evals += 1
        return self.cfg.patience > 0 and self.bad_evals >= self.cfg.patience

    # -- bookkeeping ------------------------------------------------------------------------------
    def _log(self, event: str, **record: Any) -> None:
        """Append ``{"event": event, "step": ..., **record}`` to the JSON-lines training log (main process)."""
        if not self.acc.is_main_process:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOG_NAME).open("a") as handle:
            handle.write(json.dumps({"event": event, "step": self.step, **record}, sort_keys=True) + "\n")

    def checkpoint(self) -> None:
        """Write the training state (main process; every process waits for it)."""
        if self.acc.is_main_process:
            info = {key: getattr(self, key) for key in STATE_KEYS}
            info.update(config=self.cfg.to_dict(), world_size=self.acc.num_processes)
            save_state(self.state_dir, self.params, self.optimizer.state_dict(), self.best, info)
        self.saved_step = self.step
        self.acc.wait_for_everyone()

    def progress(self) -> float:
        """Fraction used of the tightest budget."""
        cfg = self.cfg
        budgets = ((self.step, cfg.steps), (self.tokens, cfg.max_tokens), (self.elapsed, 60.0 * (cfg.max_minutes or 0)))
        return max([0.0] + [used / limit for used, limit in budgets if limit])

    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, checkpoint, stop. Second Ctrl-C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._interrupt:
                raise KeyboardInterrupt
            self._interrupt = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- the loop ---------------------------------------------------------------------------------
    def _micro_steps(self, batches: Iterator[Batch]) -> tuple[float, dict[str, float], int]:
        total, terms, tokens = 0.0, {}, 0
        accum = self.cfg.grad_accum
        for micro in range(accum):
            batch = next(batches)
            self.digest.update(batch.input_ids.numpy().tobytes())
            tokens += batch.tokens
            sync = contextlib.nullcontext() if micro == accum - 1 else self.acc.no_sync(self.model)
            with sync:
                loss, parts = self.loss(batch)
                self.acc.backward(loss / accum)
            total += float(loss.detach()) / accum
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v / accum
        return total, terms, tokens

    def _sync(self, nonfinite: bool, tokens: int, started: float) -> tuple[bool, int, bool]:
        """Agree across processes on divergence, tokens, Ctrl-C and elapsed time (from process 0)."""
        elapsed = self.elapsed_base + time.perf_counter() - started if self.acc.is_main_process else 0.0
        vec = torch.tensor([float(nonfinite), float(tokens), float(self._interrupt), elapsed], dtype=torch.float64)
        if self.acc.num_processes > 1:
            vec = self.acc.reduce(vec.to(self.acc.device), reduction="sum").cpu()
        self.elapsed = float(vec[3])
        return bool(vec[0] > 0), int(vec[1]), bool(vec[2] > 0)

    def _diverged(self, loss: float) -> DistillDiverged:
        self.optimizer.zero_grad(set_to_none=True)
        self._log("diverged", loss=loss)
        return DistillDiverged(
            f"the loss became {loss} at step {self.step + 1}; stopped. The last good checkpoint (step "
            f"{self.saved_step}) is kept in '{self.state_dir}': continue with --resume and a lower --lr"
        )

    def train(self) -> DistillResult:
        """Run until a budget is used up, early stopping, divergence or Ctrl-C."""
        cfg = self.cfg
        floor = 1.0 / cfg.steps if cfg.steps else 1e-3
        with self._sigint():
            if not self.resumed:
                self.before = self.evaluate()
                self._record_eval(self.before)
                self.checkpoint()
            batches = self.train_batches.iterate(skip=self.step * cfg.grad_accum)
            started, self.elapsed_base = time.perf_counter(), self.elapsed
            reason = "budget"
            with self.reporter.stage("distilling", total=self._bar_total()):
                self._shown = 0
                self._advance_bar({})
                while self.progress() < 1.0:
                    reason = self._one_step(batches, started, floor)
                    if reason != "budget":
                        break
            if self.history[-1]["step"] != self.step:
                self._record_eval(self.evaluate())
        return self._finish(reason)

    def _bar_total(self) -> int:
        """Steps when the step count is the only budget, else per-mille of the tightest budget."""
        cfg = self.cfg
        return cfg.steps if cfg.steps and not cfg.max_tokens and not cfg.max_minutes else 1000

    def _advance_bar(self, metrics: dict[str, float]) -> None:
        """Move the progress bar to the current position (the reporter computes tokens/s and ETA)."""
        total = self._bar_total()
        position = self.step if total == self.cfg.steps else min(total, int(self.progress() * total))
        delta, self._shown = position - self._shown, position
        if delta or metrics:
            self.reporter.advance(delta, **metrics)

    def _one_step(self, batches: Iterator[Batch], started: float, floor: float) -> str:
        cfg = self.cfg
        lr = cfg.lr * lr_factor(self.progress(), cfg.warmup, cfg.min_lr_ratio, floor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # absent in states saved before scales
        step_start = time.perf_counter()
        loss, terms, tokens = self._micro_steps(batches)
        diverged, tokens, interrupted = self._sync(not math.isfinite(loss), tokens, started)
        if diverged:
            raise self._diverged(loss)
        if cfg.max_grad_norm > 0:
            self.acc.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += tokens
        tok_s = tokens / max(1e-9, time.perf_counter() - step_start)
        per_term = {f"loss_{k}": v for k, v in terms.items()}
        self._log("step", loss=loss, lr=lr, tokens=self.tokens, tokens_per_s=tok_s, elapsed=self.elapsed, **per_term)
        shown = {"step": float(self.step), "loss": loss, "tok/s": tok_s}
        if self.history:
            shown[f"eval_{PRIMARY[self.kind]}"] = self.history[-1][PRIMARY[self.kind]]
        self._advance_bar(shown)
        stop = False
        if self.step % cfg.eval_every == 0:
            stop = self._record_eval(self.evaluate())
        interrupted = interrupted or (self.acc.num_processes == 1 and self._interrupt)
        if self.step % cfg.checkpoint_every == 0 or interrupted:
            self.checkpoint()
        if interrupted:
            raise DistillInterrupted(
                f"interrupted at step {self.step}; checkpoint saved in '{self.state_dir}': continue with --resume"
            )
        return "early_stop" if stop else "budget"

    def _finish(self, reason: str) -> DistillResult:
        if self.best is not None:
            self._load_params(self.best)
        after = next(h for h in self.history if h["step"] == self.best_step)
        self._log("done", reason=reason, best_step=self.best_step)
        return DistillResult(
            kind=self.kind,
            steps=self.step,
            tokens=self.tokens,
            seconds=self.elapsed,
            stop_reason=reason,
            before=self.before,
            after={k: v for k, v in after.items() if k != "step"},
            best_step=self.best_step,
            eval_split=self.eval_split,
            trainable=self.trainable,
            trainable_params=sum(p.numel() for p in self.params.values()),
            data_digest=self.digest.hexdigest(),
            params_digest=tensors_digest({n: p.detach() for n, p in self.params.items()}),
            cache=self.cache.stats() if self.cache is not None else {},
            history=self.history,
        )
