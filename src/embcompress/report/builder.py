"""Assemble the report: size, matrix fidelity, behaviour, speed, int8/int4 references, provenance."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from ..checkpoint import SUMMARY_NAME, write_json
from ..codec import REFERENCE_SCHEMES, reference_quantize
from ..config import CompressionConfig
from ..data import count_tokens, iter_documents, split_documents
from ..errors import EmbcompressError
from ..kinds import ModelKind, detect_kind
from ..options import Options, require
from ..progress import LoggingReporter, Reporter
from ..sentence import describe as describe_pipeline
from ..sentence import pipeline_of
from ..sizes import unique_tensors
from ..spectral import energy_curve, singular_values
from ..surgery import find_targets
from ..version import __version__
from .behaviour import PRIMARY_METRIC, TeacherOutputs, compare, teacher_outputs
from .buckets import bucket_summary, frequency_buckets
from .downstream import RatedPairs, downstream_section, load_rated_sets
from .evalset import EvalOptions, build_eval_set
from .fidelity import matrix_fidelity, quantized_rows, rows_of
from .size import files_on_disk, model_size, module_size
from .speed import measure_speed
from .verdict import compare_variants, compared_metrics, headline

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REPORT_NAME = "embcompress-report.json"


@dataclass
class ReportOptions(Options):
    """What to measure (validated at construction).

    Attributes:
        eval: Size and batching of the evaluation text.
        speed: Measure latencies (needs text for the batch).
        speed_repeats: Timed repetitions (median reported).
        speed_threads: Torch CPU threads while timing (``None``: leave as is).
        references: Deployed quantizers measured beside the student (:data:`embcompress.codec.REFERENCE_SCHEMES`).
        freq_max_tokens: Tokens counted for the frequency buckets (``None``: all).
        text_field: Field / column holding the text in JSONL / parquet data.
        heldout_fraction / split_seed: Measure on the held-out side of the hash split of the text
            (:func:`embcompress.data.split_documents`), e.g. the documents a distillation never trained on.
        downstream: Sentence encoders: Spearman correlation with human similarity ratings (Lee,
            SimLex-999, WordSim-353 from gensim's wheel) of the teacher, student and references
            (:mod:`embcompress.report.downstream`).
    """

    eval: EvalOptions = field(default_factory=EvalOptions)
    speed: bool = True
    speed_repeats: int = 5
    speed_threads: int | None = None
    references: tuple[str, ...] = tuple(REFERENCE_SCHEMES)
    freq_max_tokens: int | None = 2_000_000
    text_field: str | None = None
    heldout_fraction: float | None = None
    split_seed: int = 0
    downstream: bool = False

    def validate(self) -> None:
        if isinstance(self.eval, dict):
            self.eval = EvalOptions.from_dict(self.eval)
        self.references = tuple(self.references)
        self.require_positive("speed_repeats")
        self.require_positive("speed_threads", "freq_max_tokens", optional=True)
        bad = [name for name in self.references if name not in REFERENCE_SCHEMES]
        require(not bad, "references", f"names unknown scheme(s) {bad}; valid: {', '.join(REFERENCE_SCHEMES)}")
        self.require_fraction("heldout_fraction", optional=True)


@dataclass
class Evaluation:
    """Text-derived inputs computed once and shared by the student, the references and a sweep."""

    task: str | None
    counts: torch.Tensor | None = None
    buckets: torch.Tensor | None = None
    teacher: TeacherOutputs | None = None
    special_ids: list[int] = field(default_factory=list)
    data: dict[str, Any] | None = None


def _docs(path: str | Path, options: ReportOptions) -> Iterable[str]:
    docs = iter_documents(path, options.text_field)
    if options.heldout_fraction is not None:
        return split_documents(docs, "heldout", options.heldout_fraction, options.split_seed)
    return docs


def prepare_evaluation(
    teacher: nn.Module,
    tokenizer: Any,
    data: str | Path | None,
    options: ReportOptions,
    freq_data: str | Path | None = None,
    reporter: Reporter | None = None,
) -> Evaluation:
    """Token counts, frequency buckets, evaluation batches and teacher outputs (computed once)."""
    reporter = reporter or LoggingReporter()
    task = detect_kind(teacher)
    counts_path = freq_data or data
    if counts_path is None:
        return Evaluation(task)
    if tokenizer is None:
        raise EmbcompressError("metrics on text need a tokenizer; neither the student nor the teacher folder has one")
    vocab = teacher.get_input_embeddings().weight.shape[0]
    with reporter.stage("counting tokens"):
        try:
            counts = count_tokens(tokenizer, _docs(counts_path, options), vocab, options.freq_max_tokens)
        except EmbcompressError as exc:
            raise EmbcompressError(f"{exc} ('{counts_path}'); pass a --data file with text") from None
    buckets = frequency_buckets(counts)
    info: dict[str, Any] = {
        "path": str(data) if data is not None else None,
        "freq_path": str(counts_path),
        "frequency_tokens": int(counts.sum()),
        "buckets": bucket_summary(counts, buckets),
    }
    evaluation = Evaluation(task, counts, buckets, special_ids=list(tokenizer.all_special_ids), data=info)
    if data is None or task is None:
        return evaluation
    pipeline = pipeline_of(teacher) if task == "encoder" else None
    pipeline = pipeline.with_tokenizer(tokenizer) if pipeline is not None else None
    docs = _docs(data, options)
    if pipeline is not None:
        docs = (pipeline.text(doc) for doc in docs if doc.strip())
    eval_set = build_eval_set(task, tokenizer, docs, options.eval)
    info["eval"] = eval_set.describe()
    if task == "encoder":
        info["sentence_embedding"] = describe_pipeline(pipeline)
    with reporter.stage("teacher outputs", total=len(eval_set.batches)):
        evaluation.teacher = teacher_outputs(
            teacher, eval_set, options.eval.neighbours, reporter.advance, pipeline=pipeline
        )
    return evaluation


# -- matrices ---------------------------------------------------------------------------------------
@dataclass
class MatrixPair:
    """One original matrix of the teacher and the module holding its replacement in the student."""

    role: str
    path: str
    original: torch.Tensor
    dense_module: nn.Module
    student_module: nn.Module
    tied: bool


def _student_tied(student: nn.Module) -> bool:
    inp, out = student.get_input_embeddings(), student.get_output_embeddings()
    if out is None:
        return False
    weight = getattr(out, "weight", None)
    return getattr(out, "source", None) is inp or (weight is not None and weight is getattr(inp, "weight", None))


def matrix_pairs(teacher: nn.Module, student: nn.Module) -> list[MatrixPair]:
    """Pair the teacher's embedding matrices with the student's modules; refuse mismatched shapes."""
    found = find_targets(teacher)
    s_in = student.get_input_embeddings()
    s_rows = getattr(s_in, "num_embeddings", None)
    if s_rows != found.vocab_size or getattr(s_in, "embedding_dim", None) != found.hidden_size:
        raise EmbcompressError(
            f"student and teacher embeddings differ: student {s_rows}x{getattr(s_in, 'embedding_dim', '?')}, "
            f"teacher {found.vocab_size}x{found.hidden_size}; pass the teacher the student was compressed from"
        )
    pairs = [MatrixPair("input", found.input_path, found.input_module.weight.detach(), found.input_module, s_in, False)]
    s_out = student.get_output_embeddings()
    if found.output_module is not None and s_out is not None:
        tied = found.tied and _student_tied(student)
        weight = found.output_module.weight.detach()
        pairs.append(MatrixPair("output", found.output_path or "", weight, found.output_module, s_out, tied))
    return pairs


def check_vocabularies(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Refuse a student whose tokenizer maps tokens to different ids than the teacher's."""
    if student_tokenizer is None or teacher_tokenizer is None:
        return
    a, b = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if a != b:
        diff = next((tok for tok in sorted(set(a) | set(b)) if a.get(tok) != b.get(tok)), "?")
        raise EmbcompressError(
            f"student and teacher tokenizers differ (student {len(a)} tokens, teacher {len(b)}; first difference "
            f"at token {diff!r}); pass the teacher the student was compressed from"
        )


# -- sections ---------------------------------------------------------------------------------------
def size_section(
    teacher: nn.Module, student: nn.Module, pairs: list[MatrixPair], student_dir: Path | None, teacher_disk: Any
) -> dict[str, Any]:
    modules = [module_size(p.role, p.path, p.dense_module, p.student_module, p.tied) for p in pairs]
    embedding = {
        key: sum(m[key] for m in modules) for key in ("params_before", "params_after", "bytes_before", "bytes_after")
    }
    embedding["ratio"] = embedding["bytes_before"] / embedding["bytes_after"] if embedding["bytes_after"] else None
    t_size, s_size = model_size(teacher), model_size(student)
    extra = sum(m["runtime_extra_bytes"] for m in modules)
    serving_s = s_size["resident_bytes"] + extra
    return {
        "modules": modules,
        "embedding": embedding,
        "model": {"teacher": t_size, "student": s_size, "ratio": t_size["bytes"] / max(s_size["bytes"], 1)},
        "disk": {"teacher": teacher_disk, "student": files_on_disk(student_dir)},
        "serving": {
            "teacher_bytes": t_size["resident_bytes"],
            "student_bytes": serving_s,
            "student_runtime_extra_bytes": extra,
            "ratio": t_size["resident_bytes"] / max(serving_s, 1),
        },
    }


def fidelity_section(
    pairs: list[MatrixPair],
    evaluation: Evaluation,
    scheme: str | None = None,
    teacher_tied: bool = False,
    quantized: nn.Module | None = None,
) -> dict[str, Any]:
    """Fidelity of the student's matrices or, given ``scheme``, of the teacher's through that reference quantizer
    (read from ``quantized``, the teacher's :func:`quantized_copy`, when it is already built)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if p.tied if scheme is None else (p.role == "output" and teacher_tied):
            out[p.role] = {"tied_to_input": True}
            continue
        if scheme is None:
            rows = rows_of(p.student_module)
        elif quantized is not None:
            weight = quantized.get_submodule(p.path).weight.detach()
            rows = functools.partial(_row_range, weight)
        else:
            rows = quantized_rows(p.original, scheme)
        out[p.role] = matrix_fidelity(p.original, rows, evaluation.counts, evaluation.buckets)
    return out


def _row_range(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return weight[start:stop]


def quantized_copy(teacher: nn.Module, scheme: str) -> nn.Module:
    """A copy of ``teacher`` whose embedding matrices went through the reference quantizer ``scheme``; every
    other parameter and buffer is shared with ``teacher`` (not copied: a copy of Gemma-3-270m is 1 GB), so
    the copy is for inference only."""
    found = find_targets(teacher)
    modules = [found.input_module] + ([found.output_module] if found.output_module is not None else [])
    matrices = unique_tensors(m.weight for m in modules)
    replaced = {id(w) for w in matrices}
    memo: dict[int, Any] = {
        id(t): t for t in itertools.chain(teacher.parameters(), teacher.buffers()) if id(t) not in replaced
    }
    with torch.no_grad():
        for weight in matrices:
            values = reference_quantize(scheme, weight.detach())[0].to(weight.dtype)
            memo[id(weight)] = nn.Parameter(values, requires_grad=weight.requires_grad)
    return copy.deepcopy(teacher, memo)


def reference_rows(
    teacher: nn.Module, pairs: list[MatrixPair], evaluation: Evaluation, options: ReportOptions, reporter: Reporter
) -> list[dict[str, Any]]:
    """The same metrics for the deployed quantizers (int8, Q8_0, Q4_0, NF4, int4) of all the teacher's
    embedding matrices; bytes exactly as each format stores them, and bits per weight. Each scheme
    quantizes the matrices once, for both the fidelity and the behaviour."""
    teacher_tied = find_targets(teacher).tied
    stored = [p.original for p in pairs if not (teacher_tied and p.role == "output")]
    before = sum(m.numel() * m.element_size() for m in stored)
    out = []
    for scheme in options.references:
        nbytes = sum(reference_quantize(scheme, m[:1])[1] * m.shape[0] for m in stored)
        row: dict[str, Any] = {
            "name": scheme,
            "bits_per_weight": 8 * nbytes / sum(m.numel() for m in stored),
            "embedding_bytes": nbytes,
            "ratio": before / nbytes,
            "behaviour": None,
        }
        if evaluation.teacher is None:
            row["fidelity"] = fidelity_section(pairs, evaluation, scheme, teacher_tied)
        else:
            with reporter.stage(f"{scheme} reference", total=len(evaluation.teacher.per_batch)):
                model = quantized_copy(teacher, scheme)
                row["fidelity"] = fidelity_section(pairs, evaluation, scheme, teacher_tied, model)
                row["behaviour"] = compare(
                    model, evaluation.teacher, evaluation.buckets, evaluation.special_ids, reporter.advance
                )
                del model
        out.append(row)
    return out


def primary_value(
    task: str | None, behaviour: dict[str, Any] | None, fidelity: dict[str, Any]
) -> tuple[str, bool, Any]:
    """``(metric, higher_is_better, value)`` of the one number compared at a glance."""
    if behaviour is not None and task in PRIMARY_METRIC:
        key, higher = PRIMARY_METRIC[task]
        return key, higher, behaviour.get(key)
    return "relative_error", False, fidelity["input"].get("relative_error")


def glance_section(report: dict[str, Any]) -> dict[str, Any]:
    """Student vs each reference: embedding bytes and every compared metric, one comparison per reference
    and a one-line verdict over all of them (:mod:`embcompress.report.verdict`)."""
    metric, higher, value = primary_value(report["task"], report["behaviour"], report["fidelity"])
    metrics = compared_metrics(report)
    size = report["size"]["embedding"]
    weights = max(size["params_before"], 1)

    def row(name: str, nbytes: int, variant: dict[str, Any] | None, value: Any) -> dict[str, Any]:
        values = {m.name: m.value(variant) for m in metrics} if variant is not None else {}
        bits = 8 * nbytes / weights
        return {"name": name, "embedding_bytes": nbytes, "value": value, "values": values, "bits_per_weight": bits}

    rows = [row("original", size["bytes_before"], None, None), row("student", size["bytes_after"], report, value)]
    for ref in report["references"]:
        ref_value = primary_value(report["task"], ref["behaviour"], ref["fidelity"])[2]
        rows.append(row(ref["name"], ref["embedding_bytes"], ref, ref_value))
    comparisons = [
        compare_variants(metrics, report, ref, ref["name"], (size["bytes_after"], ref["embedding_bytes"]))
        for ref in report["references"]
    ]
    return {
        "metric": metric,
        "higher_is_better": higher,
        "metrics": [{"name": m.name, "higher_is_better": m.higher_is_better} for m in metrics],
        "rows": rows,
        "comparisons": [c.to_dict() for c in comparisons],
        "verdict": headline(comparisons),
    }


def spectrum_section(pairs: list[MatrixPair], max_points: int = 4096) -> dict[str, Any]:
    """Singular values and energy curve of each original (untied) matrix, with the student's rank."""
    out: dict[str, Any] = {}
    for p in pairs:
        if p.tied or (p.role == "output" and p.original.data_ptr() == pairs[0].original.data_ptr()):
            continue
        s = singular_values(p.original)
        out[p.role] = {
            "singular_values": [float(f"{v:.5g}") for v in s[:max_points]],
            "energy": [float(f"{v:.5g}") for v in energy_curve(s)[:max_points]],
            "rank": getattr(getattr(p.student_module, "source", p.student_module), "rank", None),
        }
    return out


def read_summary(folder: Path | None) -> dict[str, Any] | None:
    """The ``embcompress.json`` of a checkpoint folder; ``None`` when there is none or it is not valid JSON."""
    if folder is None or not (folder / SUMMARY_NAME).is_file():
        return None
    try:
        return json.loads((folder / SUMMARY_NAME).read_text())
    except json.JSONDecodeError:
        logger.warning("%s in %s is not valid JSON; ignored", SUMMARY_NAME, folder)
        return None


def versions() -> dict[str, str]:
    return {
        "embcompress": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def provenance_section(student: nn.Module, student_dir: Path | None, options: ReportOptions) -> dict[str, Any]:
    """Method, ranks, dtypes and distillation summary (from ``embcompress.json`` / config), versions, seed."""
    qc = getattr(student.config, "quantization_config", None)
    config = getattr(qc, "compression", None)
    if config is None and isinstance(qc, dict) and qc.get("quant_method") == "embcompress":
        config = CompressionConfig.from_dict(qc)
    summary = read_summary(student_dir)
    out: dict[str, Any] = {"compressed": config is not None, "versions": versions(), "report_seed": options.eval.seed}
    if config is not None:
        keys = ("path", "role", "method", "rank", "factor_dtype", "tied_to", "options")
        modules = [{key: getattr(m, key) for key in keys} for m in config.modules]
        out.update(method=config.method, seed=config.seed, modules=modules)
    if summary is not None:
        out["summary"] = {k: summary.get(k) for k in ("source", "options", "embcompress_version") if k in summary}
        distill = {k: v for k, v in summary.items() if "distill" in k}
        out["distillation"] = distill or None
    return out


# -- entry point ------------------------------------------------------------------------------------
def build_report(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer: Any = None,
    data: str | Path | None = None,
    options: ReportOptions | None = None,
    *,
    freq_data: str | Path | None = None,
    student_dir: str | Path | None = None,
    student_name: str | None = None,
    teacher_name: str | None = None,
    teacher_disk: dict[str, Any] | None = None,
    evaluation: Evaluation | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-ready dict (schema: ``docs/report.md``).

    ``teacher`` is the original dense model; ``student`` the compressed (or any other) model with
    the same vocabulary. Without ``data`` only size and matrix fidelity are measured (plus
    frequency-bucket splits when ``freq_data`` is given); ``needs_text`` then lists what was skipped.
    A prepared ``evaluation`` (see :func:`prepare_evaluation`) is reused instead of recomputed.
    """
    options = options or ReportOptions()
    reporter = reporter or LoggingReporter()
    rated_sets = _downstream_sets(teacher, tokenizer, options)
    folder = Path(student_dir) if student_dir is not None else None
    pairs = matrix_pairs(teacher, student)
    if evaluation is None:
        evaluation = prepare_evaluation(teacher, tokenizer, data, options, freq_data, reporter)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "embcompress_version": __version__,
        "student": {"name": student_name or (str(folder) if folder else None), "architecture": type(student).__name__},
        "teacher": {"name": teacher_name, "architecture": type(teacher).__name__},
        "task": evaluation.task,
        "data": evaluation.data,
    }
    with reporter.stage("size and matrix fidelity"):
        report["size"] = size_section(teacher, student, pairs, folder, teacher_disk)
        report["fidelity"] = fidelity_section(pairs, evaluation)
        report["spectrum"] = spectrum_section(pairs)
    report["behaviour"] = report["speed"] = None
    if evaluation.teacher is not None:
        with reporter.stage("student outputs", total=len(evaluation.teacher.per_batch)):
            report["behaviour"] = compare(
                student, evaluation.teacher, evaluation.buckets, evaluation.special_ids, reporter.advance
            )
        if options.speed:
            with reporter.stage("timing"):
                batch = evaluation.teacher.eval_set.batches[0]
                report["speed"] = measure_speed(teacher, student, batch, options.speed_repeats, options.speed_threads)
    report["references"] = reference_rows(teacher, pairs, evaluation, options, reporter)
    if rated_sets is not None:
        with reporter.stage("human-rated similarity"):
            builders = {scheme: functools.partial(quantized_copy, teacher, scheme) for scheme in options.references}
            pipeline = pipeline_of(teacher)
            report["downstream"] = downstream_section(teacher, student, tokenizer, builders, pipeline, rated_sets)
    report["glance"] = glance_section(report)
    report["provenance"] = provenance_section(student, folder, options)
    report["needs_text"] = needs_text(report, evaluation)
    return report


def _downstream_sets(teacher: nn.Module, tokenizer: Any, options: ReportOptions) -> list[RatedPairs] | None:
    """The human-rated sets when ``options.downstream`` asks for them, refusing a model or an installation
    that cannot measure them before any work is done."""
    if not options.downstream:
        return None
    if detect_kind(teacher) != ModelKind.ENCODER:
        raise EmbcompressError(
            f"human-rated similarity (--downstream) measures sentence encoders, not {type(teacher).__name__}"
        )
    if tokenizer is None:
        raise EmbcompressError("human-rated similarity (--downstream) needs a tokenizer")
    return load_rated_sets()


def needs_text(report: dict[str, Any], evaluation: Evaluation) -> list[str]:
    """Metrics left out because no (suitable) text was given."""
    missing = []
    if evaluation.counts is None:
        missing += ["fidelity.weighted_relative_error", "fidelity.by_bucket"]
    if evaluation.teacher is None:
        if evaluation.task is None:
            missing.append(f"behaviour (not supported for {report['teacher']['architecture']})")
        else:
            missing += ["behaviour", "speed", "references.behaviour"]
    return missing


def write_report(folder: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as ``embcompress-report.json`` into a checkpoint folder (sorted keys, package version)."""
    path = Path(folder) / REPORT_NAME
    write_json(path, report)
    return path


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON text: sorted keys, NaN/inf written as null."""
    return json.dumps(_finite(report), indent=2, sort_keys=True, default=str) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
