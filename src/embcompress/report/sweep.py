"""Sweep methods x budgets in memory, reusing one evaluation (batches, teacher outputs, counts) for the grid."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import write_checkpoint
from ..codec import SCHEME_LABELS
from ..config import ROLES
from ..errors import EmbcompressError
from ..factorize import FactorizeOptions, factorize_model
from ..methods import get_method, method_names
from ..options import Options, require
from ..progress import LoggingReporter, Reporter
from ..spectral import rank_for_energy, singular_values
from ..version import __version__
from .behaviour import compare
from .builder import Evaluation, ReportOptions, matrix_pairs, primary_value, reference_rows
from .evalset import EvalOptions
from .fidelity import matrix_fidelity, rows_of
from .size import module_size

logger = logging.getLogger(__name__)


#: The lighter evaluation of each sweep point (the ``sweep`` command's defaults).
SWEEP_EVAL = EvalOptions(max_tokens=2048, max_docs=300)


@dataclass
class SweepGrid(Options):
    """Methods x budgets. A budget is a rank, an energy share kept (SVD spectrum of the input matrix) or a
    compression ratio of the stored embedding bytes (converted to the rank that reaches it).

    Values are validated at construction; methods not registered are skipped at run time."""

    methods: tuple[str, ...] = ("svd",)
    ranks: tuple[int, ...] = ()
    energies: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()
    targets: tuple[str, ...] = ROLES
    factor_dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        self.methods, self.ranks, self.energies, self.ratios, self.targets = (
            tuple(v) for v in (self.methods, self.ranks, self.energies, self.ratios, self.targets)
        )
        for name in ("ranks", "energies", "ratios"):
            values = getattr(self, name)
            require(all(v > 0 for v in values), name, f"values must be positive, got {list(values)}")
        shares = list(self.energies)
        require(all(e <= 1 for e in shares), "energies", f"are shares between 0 and 1, got {shares}")
        bad = [t for t in self.targets if t not in ROLES]
        if bad or not self.targets:
            raise EmbcompressError(f"unknown target(s) {', '.join(bad) or '(none)'}; valid: input, output")
        if not (self.ranks or self.energies or self.ratios):
            raise EmbcompressError("no budget given; pass --ranks, --energies or --ratios")

    def budgets(self, teacher: nn.Module, method: str) -> list[tuple[str, int]]:
        """``(label, rank)`` for every budget of ``method``."""
        matrix = teacher.get_input_embeddings().weight.detach()
        rows, cols = matrix.shape
        out = [(f"r={r}", r) for r in self.ranks]
        if self.energies:
            s = singular_values(matrix)
            out += [(f"energy={e:g}", rank_for_energy(s, e)) for e in self.energies]
        per_rank = get_method(method).params_per_rank(rows, cols)
        out += [(f"ratio={x:g}x", max(1, math.floor(rows * cols / (x * per_rank)))) for x in self.ratios]
        return out


def available_methods(requested: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split the requested methods into registered ones and the ones not (yet) registered; an error
    when none is registered."""
    known = set(method_names())
    usable, missing = [m for m in requested if m in known], [m for m in requested if m not in known]
    if not usable:
        raise EmbcompressError(
            f"none of the methods {', '.join(requested)} is registered; available: {', '.join(method_names())}"
        )
    return usable, missing


def pareto_front(points: list[dict[str, Any]], higher_is_better: bool) -> None:
    """Mark ``pareto=True`` on points no other point beats on both bytes and quality."""
    valid = [p for p in points if p.get("value") is not None and p.get("embedding_bytes") is not None]
    sign = 1.0 if higher_is_better else -1.0
    for p in points:
        p["pareto"] = False
    for p in valid:
        p["pareto"] = not any(
            q is not p
            and q["embedding_bytes"] <= p["embedding_bytes"]
            and sign * q["value"] >= sign * p["value"]
            and (q["embedding_bytes"] < p["embedding_bytes"] or sign * q["value"] > sign * p["value"])
            for q in valid
        )


def _evaluate_point(
    teacher: nn.Module, model: nn.Module, evaluation: Evaluation, original_bytes: int
) -> dict[str, Any]:
    pairs = matrix_pairs(teacher, model)
    sizes = [module_size(p.role, p.path, p.dense_module, p.student_module, p.tied) for p in pairs]
    after = sum(s["bytes_after"] for s in sizes)
    fid = {p.role: matrix_fidelity(p.original, rows_of(p.student_module), evaluation.counts) for p in pairs[:1]}
    behaviour = None if evaluation.teacher is None else compare(model, evaluation.teacher, evaluation.buckets)
    return _scores(evaluation.task, after, original_bytes / after if after else None, fid, behaviour)


def _scores(
    task: str | None, nbytes: int, ratio: float | None, fidelity: dict[str, Any], behaviour: dict[str, Any] | None
) -> dict[str, Any]:
    """What a sweep point (fitted or quantization reference) shows: bytes, ratio, the input matrix's errors
    and the primary metric."""
    return {
        "embedding_bytes": nbytes,
        "ratio": ratio,
        "relative_error": fidelity["input"]["relative_error"],
        "weighted_relative_error": fidelity["input"]["weighted_relative_error"],
        "value": primary_value(task, behaviour, fidelity)[2],
        "behaviour": behaviour,
    }


def _run_point(
    teacher: nn.Module, method: str, label: str, rank: int, grid: SweepGrid, evaluation: Evaluation, original: int
) -> tuple[dict[str, Any], nn.Module | None]:
    point: dict[str, Any] = {"method": method, "label": label, "rank": rank, "embedding_bytes": None, "error": None}
    model = copy.deepcopy(teacher)
    options = FactorizeOptions(
        method=method, rank=rank, targets=grid.targets, factor_dtype=grid.factor_dtype, seed=grid.seed
    )
    uses_weights = getattr(get_method(method), "weights_use", "optional") != "none"
    weights = evaluation.counts.float() if evaluation.counts is not None and uses_weights else None
    start = time.perf_counter()
    try:
        result = factorize_model(model, options, row_weights=weights)
    except (EmbcompressError, NotImplementedError, RuntimeError, ValueError) as exc:
        point["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("%s %s failed: %s", method, label, point["error"])
        return point, None
    point["fit_seconds"] = time.perf_counter() - start
    point.update(_evaluate_point(teacher, model, evaluation, original))
    point["summary"] = {**result.to_dict(), "options": options.to_dict()}
    return point, model


def run_sweep(
    teacher: nn.Module,
    grid: SweepGrid,
    evaluation: Evaluation,
    options: ReportOptions | None = None,
    reporter: Reporter | None = None,
    teacher_name: str | None = None,
    save: Any = None,
) -> dict[str, Any]:
    """Fit every method x budget on a copy of ``teacher`` and score it against the shared evaluation.

    ``save``, if given, is called as ``save(model, name, summary)`` for each fitted point (to write checkpoints).
    Returns a JSON-ready dict: one entry per point and per int8/int4 reference, Pareto flags included.
    """
    options = options or ReportOptions()
    reporter = reporter or LoggingReporter()
    methods, missing = available_methods(grid.methods)
    plan = [(m, label, rank) for m in methods for label, rank in grid.budgets(teacher, m)]
    pairs = matrix_pairs(teacher, teacher)
    original = sum(module_size(p.role, p.path, p.dense_module, p.dense_module, p.tied)["bytes_before"] for p in pairs)
    points = []
    with reporter.stage(f"sweep ({len(plan)} points)", total=len(plan)):
        for method, label, rank in plan:
            point, model = _run_point(teacher, method, label, rank, grid, evaluation, original)
            if model is not None and save is not None:
                point["saved_to"] = str(save(model, f"{method}-{label.replace('=', '')}", point["summary"]))
            points.append(point)
            reporter.advance(1)
    references = _reference_points(teacher, evaluation, options, reporter)
    metric, higher, _ = primary_value(evaluation.task, {} if evaluation.teacher else None, {"input": {}})
    pareto_front(points + references, higher)
    return {
        "schema_version": 1,
        "embcompress_version": __version__,
        "teacher": teacher_name,
        "task": evaluation.task,
        "metric": metric,
        "higher_is_better": higher,
        "original_bytes": original,
        "points": points,
        "references": references,
        "skipped_methods": missing,
        "data": evaluation.data,
    }


def _reference_points(
    teacher: nn.Module, evaluation: Evaluation, options: ReportOptions, reporter: Reporter
) -> list[dict[str, Any]]:
    pairs = matrix_pairs(teacher, teacher)[:1]
    out = []
    for ref in reference_rows(teacher, pairs, evaluation, options, reporter):
        label = f"{SCHEME_LABELS[ref['name']]}, {ref['bits_per_weight']:.2f} bits/weight"
        scores = _scores(evaluation.task, ref["embedding_bytes"], ref["ratio"], ref["fidelity"], ref["behaviour"])
        out.append({"method": ref["name"], "label": label, "rank": None, **scores, "error": None})
    return out


def save_dir_writer(folder: Path, source: Any, tokenizer: Any) -> Any:
    """A ``save`` callback writing each point as a checkpoint under ``folder`` (created now)."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(model: nn.Module, name: str, summary: dict[str, Any]) -> Path:
        out = folder / name
        write_checkpoint(model, out, source, tokenizer, {**summary, "source": source.name}, overwrite=True)
        return out

    return save
