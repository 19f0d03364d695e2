"""``distill_checkpoint``: load student + teacher, validate, run the loop, write the checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from torch import nn

from ..checkpoint import (
    SUMMARY_NAME,
    check_output_dir,
    has_tokenizer,
    read_compression_config,
    write_checkpoint,
)
from ..checkpoint import load as load_compressed
from ..data import check_text_files, iter_documents
from ..errors import CheckpointError, EmbcompressError
from ..kinds import ModelKind, kind_of_class, model_kind
from ..outputs import reserve_output
from ..progress import LoggingReporter, Reporter
from ..sources import LoadOptions, ModelSource, input_paths, load_source, model_class
from .batches import Batch, CorpusBatches, RandomTokenBatches, SampledBatches
from .cache import TeacherCache
from .config import DistillConfig
from .model_utils import float32_factors, max_positions
from .trainer import LOG_NAME, Distiller, DistillResult, make_accelerator


def check_data(data: str | os.PathLike[str] | None, config: DistillConfig, caching: bool = False) -> None:
    """Fail before loading any model on a missing, empty or non-text corpus, or on caching without one."""
    if caching and data is None:
        raise EmbcompressError("--cache-teacher needs --data (data-free batches are never repeated)")
    if data is None:
        return
    check_text_files(data)
    if next(iter_documents(data, config.text_field), None) is None:
        raise EmbcompressError(f"the data in '{data}' holds no text")


def check_training_text(
    data: str | os.PathLike[str], tokenizer: Any, config: DistillConfig, kind: str, hint: str
) -> None:
    """One batch of training windows must come out of ``data``'s training split (tokenized only until it does)."""
    corpus = CorpusBatches(data, tokenizer, config, per_document=kind == ModelKind.ENCODER)
    found = sum(1 for _ in itertools.islice(corpus.windows("train"), config.batch_size))
    if found < config.batch_size:
        unit = "documents" if kind == ModelKind.ENCODER else f"windows of {config.seq_len} tokens"
        raise EmbcompressError(
            f"--data '{data}' is too small to distil on: its training split gives {found} of the "
            f"{config.batch_size} {unit} one batch needs; add text, or {hint}"
        )


def _check_student_text(student: Path, data: str | os.PathLike[str] | None, config: DistillConfig) -> None:
    """:func:`check_training_text` with the student's tokenizer and class, before any weights are loaded."""
    if data is None or not has_tokenizer(student):
        return
    hf_config = transformers.AutoConfig.from_pretrained(str(student))
    kind = kind_of_class(model_class(hf_config, is_gguf=False).__name__, hf_config.is_encoder_decoder)
    if kind is not None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(student))
        check_training_text(data, tokenizer, config, kind, "lower --batch-size / --seq-len")


def load_student(folder: str | os.PathLike[str], device: str) -> tuple[nn.Module, Any | None, dict[str, Any]]:
    """The compressed student (strictly checked), its tokenizer if any, and its summary JSON."""
    path = Path(folder)
    model = load_compressed(path, device=device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path)) if has_tokenizer(path) else None
    summary_file = path / SUMMARY_NAME
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return model, tokenizer, summary


def check_pair(student: nn.Module, teacher: nn.Module, s_tok: Any | None, t_tok: Any | None) -> str:
    """Refuse a teacher that does not match the student (kind, shapes, vocabulary, tokenizer)."""
    kind, t_kind = model_kind(student), model_kind(teacher)
    if kind != t_kind:
        raise EmbcompressError(f"student is a {kind} model ({type(student).__name__}) but the teacher is {t_kind}")
    for name in ("vocab_size", "hidden_size"):
        s_value, t_value = getattr(student.config, name, None), getattr(teacher.config, name, None)
        if s_value != t_value:
            raise EmbcompressError(
                f"teacher/student {name} mismatch: student {s_value}, teacher {t_value}; "
                "pass the model the student was factorized from"
            )
    if t_tok is None and s_tok is None:
        raise EmbcompressError("neither the student nor the teacher has a tokenizer")
    if s_tok is not None and t_tok is not None and s_tok.get_vocab() != t_tok.get_vocab():
        raise EmbcompressError("teacher/student tokenizer mismatch: the vocabularies differ")
    return kind


def check_seq_len(model: nn.Module, config: DistillConfig) -> None:
    limit = max_positions(model)
    if limit is not None and config.seq_len > limit:
        raise EmbcompressError(f"--seq-len {config.seq_len} is larger than the model's {limit} positions")


def prepare_state_dir(state_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    if state_dir.exists() and not resume:
        if not overwrite:
            raise EmbcompressError(
                f"training checkpoints of an earlier run exist in '{state_dir}'; pass --resume to continue "
                "it or --overwrite to start over"
            )
        if is_main:
            shutil.rmtree(state_dir)


def make_sampler(teacher: nn.Module, tokenizer: Any, config: DistillConfig) -> Any:
    """``sample(prompt, seed) -> ids``: nucleus sampling from the teacher (see ``SampledBatches``)."""
    gen_cfg = transformers.GenerationConfig(
        do_sample=True,
        temperature=config.sample_temperature,
        top_p=config.sample_top_p,
        top_k=0,
        max_new_tokens=config.seq_len - 1,
        min_new_tokens=config.seq_len - 1,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    device = next(teacher.parameters()).device

    @torch.no_grad()
    def sample(prompt: torch.Tensor, seed: int) -> torch.Tensor:
        prompt = prompt.to(device)
        return teacher.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg)

    return sample


def build_batches(
    kind: str, data: Any, tokenizer: Any, teacher: nn.Module, config: DistillConfig, rank: int, world: int
) -> tuple[Any, list[Batch], str]:
    """Training batch source, held-out batches and the held-out split's name."""
    if data is not None:
        source: Any = CorpusBatches(
            data, tokenizer, config, per_document=kind == ModelKind.ENCODER, rank=rank, world=world
        )
    elif kind == ModelKind.CAUSAL_LM:
        source = SampledBatches(make_sampler(teacher, tokenizer, config), tokenizer, config, rank, world)
    else:
        source = RandomTokenBatches(tokenizer, teacher.config.vocab_size, config, rank, world)
    eval_batches, split = source.heldout(config.eval_windows)
    return source, eval_batches, split


def distill_model(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: Any,
    config: DistillConfig,
    data: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    teacher_name: str = "teacher",
    accelerator: Accelerator | None = None,
    reporter: Reporter | None = None,
) -> DistillResult:
    """Distil the factorized ``student`` towards ``teacher`` in memory; the student ends holding its best factors.

    ``state_dir`` keeps the training checkpoints that ``resume`` continues from (a temporary folder when
    not given). Under ``accelerate launch`` every process calls this with its own copy of both models;
    ``accelerator`` defaults to :func:`make_accelerator` (CUDA when available).
    """
    config = config.for_data(data)
    check_data(data, config, caching=cache_dir is not None)
    kind = check_pair(student, teacher, tokenizer, tokenizer)
    check_seq_len(student, config)
    accelerator = accelerator or make_accelerator()
    with contextlib.ExitStack() as stack:
        stack.enter_context(float32_factors(student))
        if state_dir is not None:
            prepare_state_dir(Path(state_dir), resume, False, accelerator.is_main_process)
        states = Path(state_dir) if state_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        rank, world = accelerator.process_index, accelerator.num_processes
        teacher = teacher.to(accelerator.device)
        batches, eval_batches, split = build_batches(kind, data, tokenizer, teacher, config, rank, world)
        cache = None
        if cache_dir is not None:
            fingerprint = {"teacher": teacher_name, "data": str(data), "world": world, **config.to_dict()}
            cache = TeacherCache(Path(cache_dir), {k: fingerprint[k] for k in _CACHE_KEYS}, rank)
        distiller = Distiller(
            student,
            teacher,
            tokenizer,
            config,
            kind,
            batches,
            eval_batches,
            split,
            accelerator,
            states,
            resume=resume,
            reporter=reporter,
            cache=cache,
        )
        result = distiller.train()
        if distiller.student is not student:
            student.load_state_dict(distiller.student.state_dict())
        log = states / LOG_NAME
        result.log = log.read_text() if log.is_file() else ""
    accelerator.wait_for_everyone()
    return result


def distill_checkpoint(
    student: str | os.PathLike[str],
    teacher: str,
    out: str | os.PathLike[str],
    config: DistillConfig,
    data: str | os.PathLike[str] | None = None,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    keep_state: bool = False,
    reporter: Reporter | None = None,
) -> DistillResult:
    """Load the student checkpoint and the teacher, :func:`distill_model`, and write ``out`` atomically.

    Everything that can be checked without training (options, output, data, models, vocab, sequence
    length) is checked before any model is loaded or trained.
    """
    reporter = reporter or LoggingReporter()
    load = load or LoadOptions(device="cuda" if torch.cuda.is_available() else "cpu")
    config = config.for_data(data)
    out_path = Path(out)
    check_output_dir(out_path, overwrite)
    check_data(data, config, caching=cache_dir is not None)
    if not Path(student).is_dir():
        raise CheckpointError(f"student '{student}' is not a folder; pass the output of `embcompress factorize`")
    read_compression_config(Path(student))
    _check_student_text(Path(student), data, config)
    inputs = [Path(student), *input_paths(teacher, paths=[data, cache_dir], gguf_file=load.gguf_file)]
    check_output_dir(out_path, overwrite, inputs)
    states = Path(state_dir) if state_dir else out_path.with_name(out_path.name + ".distill")
    accelerator = make_accelerator(load.device)
    main = accelerator.is_main_process
    with reserve_output(out_path, overwrite, inputs) if main else contextlib.nullcontext():
        prepare_state_dir(states, resume, overwrite, main)
        accelerator.wait_for_everyone()
        with reporter.stage(f"loading student {student}"):
            s_model, s_tok, s_summary = load_student(student, "cpu")
        _source, t_model, t_tok = load_source(teacher, dataclasses.replace(load, device="cpu"), reporter)
        check_pair(s_model, t_model, s_tok, t_tok)
        tokenizer = s_tok or t_tok
        result = distill_model(
            s_model, t_model, tokenizer, config, data, states, resume, cache_dir, teacher, accelerator, reporter
        )
        if main:
            summary = _summary(s_summary, result, config, student, teacher, data)
            with reporter.stage(f"writing {out_path}"):
                write_log = functools.partial(_write_log, log=result.log)
                src = ModelSource(str(student), "local", Path(student))
                write_checkpoint(s_model, out_path, src, tokenizer, summary, overwrite, write_log)
            if not keep_state:
                shutil.rmtree(states, ignore_errors=True)
    return result


_CACHE_KEYS = (
    "teacher",
    "data",
    "world",
    "batch_size",
    "seq_len",
    "seed",
    "heldout_fraction",
    "shuffle_buffer",
    "text_field",
    "cache_top_k",
    "hidden_layers",
    "mlm_probability",
)


def _summary(
    student_summary: dict[str, Any],
    result: DistillResult,
    config: DistillConfig,
    student: Any,
    teacher: str,
    data: Any,
) -> dict[str, Any]:
    base = {k: v for k, v in student_summary.items() if k != "embcompress_version"}
    distill = {
        **result.to_dict(),
        "config": config.to_dict(),
        "student": str(student),
        "teacher": teacher,
        "data": str(data) if data is not None else None,
        "weights": config.weights.resolved(result.kind),
    }
    return {**base, "distill": distill}


def _write_log(folder: Path, log: str) -> None:
    if log:
        (folder / LOG_NAME).write_text(log)
