"""``embcompress distill``: recover the teacher's behaviour in a factorized student by KD."""

from __future__ import annotations

from pathlib import Path

import typer

from ..distill import DistillConfig, DistillInterrupted, DistillResult, LossWeights, distill_checkpoint
from ..sources import LoadOptions
from ._common import (
    AutoDevice,
    JsonOut,
    Overwrite,
    RichReporter,
    Verbose,
    auto_device,
    command,
    fail,
    finish,
    parse_numbers,
)

_default = DistillConfig.default
_weight = LossWeights.default


@command
def distill(
    student: Path = typer.Argument(..., help="Compressed checkpoint folder (output of `embcompress factorize`)."),
    teacher: str = typer.Option(..., "--teacher", "-t", help="The original model: folder, hub id, .gguf or alias."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the distilled checkpoint to."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Text file, folder, JSONL or parquet; none: data-free."
    ),
    text_field: str | None = typer.Option(_default("text_field"), help="Text field of JSONL/parquet records."),
    steps: int | None = typer.Option(_default("steps"), help="Optimiser steps budget."),
    max_tokens: int | None = typer.Option(_default("max_tokens"), help="Training tokens budget."),
    max_minutes: float | None = typer.Option(
        _default("max_minutes"), help="Wall-clock budget (default 30 when no budget is given)."
    ),
    batch_size: int = typer.Option(_default("batch_size"), help="Sequences per micro-batch and process."),
    grad_accum: int = typer.Option(_default("grad_accum"), help="Micro-batches per optimiser step."),
    seq_len: int = typer.Option(_default("seq_len"), help="Tokens per sequence."),
    lr: float = typer.Option(
        _default("lr"), help="Peak AdamW learning rate (warmup, then cosine decay); transform codes train at a tenth."
    ),
    weight_decay: float = typer.Option(_default("weight_decay"), help="AdamW weight decay."),
    train: str = typer.Option(_default("train"), help="What trains: factors, factors+norms, all."),
    temperature: float = typer.Option(_default("temperature"), help="KL temperature."),
    kl_weight: float | None = typer.Option(_weight("kl"), help="KL weight (default 1 for LMs, 0 for encoders)."),
    hidden_weight: float | None = typer.Option(
        _weight("hidden"), help="Hidden-state weight (default 1 for encoders, else 0)."
    ),
    pooled_weight: float | None = typer.Option(
        _weight("pooled"),
        help="Sentence-embedding weight (default 1 for encoders; follows a sentence-transformers pipeline).",
    ),
    recon_weight: float | None = typer.Option(
        _weight("recon"), help="Reconstruction weight against the teacher matrix (0)."
    ),
    lm_weight: float | None = typer.Option(_weight("lm"), help="Plain LM loss weight (0)."),
    hidden_layers: str = typer.Option(
        ",".join(map(str, _default("hidden_layers"))),
        help="Hidden layers matched by the hidden term (comma-separated).",
    ),
    hidden_loss: str = typer.Option(_default("hidden_loss"), help="Hidden-state distance: cosine or mse."),
    eval_every: int = typer.Option(_default("eval_every"), help="Steps between held-out evaluations."),
    eval_windows: int = typer.Option(_default("eval_windows"), help="Held-out sequences per evaluation."),
    patience: int = typer.Option(
        _default("patience"), help="Stop after this many evaluations without improvement (0: never)."
    ),
    checkpoint_every: int = typer.Option(_default("checkpoint_every"), help="Steps between training checkpoints."),
    heldout_fraction: float = typer.Option(
        _default("heldout_fraction"), help="Share of documents held out for evaluation."
    ),
    cache_teacher: Path | None = typer.Option(None, help="Folder caching teacher top-k logits / hidden states."),
    cache_top_k: int = typer.Option(_default("cache_top_k"), help="Top-k logits kept per position when caching."),
    sample_temperature: float = typer.Option(
        _default("sample_temperature"), help="Data-free sampling temperature (causal teachers)."
    ),
    sample_top_p: float = typer.Option(_default("sample_top_p"), help="Data-free nucleus sampling top-p."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last training checkpoint."),
    keep_checkpoints: bool = typer.Option(
        False, help="Keep the training checkpoints (<output>.distill/) after success."
    ),
    gguf_file: str | None = typer.Option(LoadOptions.default("gguf_file"), help="GGUF file inside the teacher folder."),
    device: AutoDevice = None,
    seed: int = typer.Option(_default("seed"), help="Seed of data order, masking and sampling."),
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Distil a factorized STUDENT towards its dense TEACHER (factors only by default)."""
    config = DistillConfig(
        steps=steps,
        max_tokens=max_tokens,
        max_minutes=max_minutes,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seq_len=seq_len,
        lr=lr,
        weight_decay=weight_decay,
        train=train,
        weights=LossWeights(kl=kl_weight, hidden=hidden_weight, pooled=pooled_weight, recon=recon_weight, lm=lm_weight),
        temperature=temperature,
        hidden_layers=parse_numbers(hidden_layers, int, "hidden-layers"),
        hidden_loss=hidden_loss,
        eval_every=eval_every,
        eval_windows=eval_windows,
        patience=patience,
        checkpoint_every=checkpoint_every,
        heldout_fraction=heldout_fraction,
        cache_top_k=cache_top_k,
        sample_temperature=sample_temperature,
        sample_top_p=sample_top_p,
        text_field=text_field,
        seed=seed,
    )
    load = LoadOptions(gguf_file=gguf_file, device=auto_device(device))
    try:
        result = distill_checkpoint(
            student, teacher, output, config, data, load, overwrite, resume, cache_teacher,
            keep_state=keep_checkpoints, reporter=RichReporter(enabled=not json_out),
        )  # fmt: skip
    except DistillInterrupted as exc:
        fail(str(exc), code=130)
        return
    finish(json_out, {**result.to_dict(), "output": str(output)}, _summary_line(result), f"wrote [bold]{output}[/]")


def _summary_line(result: DistillResult) -> str:
    keys = sorted(set(result.before) & set(result.after))
    change = ", ".join(f"{k} {result.before[k]:.4g} -> {result.after[k]:.4g}" for k in keys)
    return (
        f"distilled {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.0f}s "
        f"({result.tokens_per_second:.0f} tok/s, stop: {result.stop_reason}); eval on {result.eval_split}: {change}"
    )
