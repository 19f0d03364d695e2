"""``embcompress compress``: the measured recipe, end to end, at a target compression ratio.

The recipe (evidence in ``docs/compress.md`` and ``benchmarks/results/quality_per_byte.md``):

1. **Frequencies.** Count the tokens of the training text (``--data``) with the model's tokenizer.
   Without text, the vocabulary order stands in for frequency (BPE merge order / WordPiece order:
   much weaker, see the docs).
2. **Layout.** ``grouped``: the ``dense`` most frequent tokens keep their rows, every other row is a
   rank-``r`` code on one shared basis; everything stored as per-row int8. ``dense`` and ``r`` are
   chosen to fill the byte budget ``dense bytes / ratio`` by :func:`choose_layout`.
3. **Distillation** of the float factors towards the original model (the teacher) on the training
   text (data-free without ``--data``), within ``max_minutes``.
4. **int8 factors.** The distilled factors are stored as per-row int8 (cannot be trained, hence last).
5. **Report** against the teacher and against per-row int8/int4 of the full matrix, on held-out text.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from .allocation import RankBucket, greedy_ranks
from .checkpoint import check_output_dir, write_checkpoint, write_json
from .codec import BAND, total_nbytes
from .data import count_tokens, iter_documents, split_counts, split_documents
from .distill import DistillConfig, distill_model, make_accelerator
from .distill.model_utils import config_positions, max_positions
from .distill.pipeline import check_data, check_seq_len, check_training_text
from .distill.trainer import LOG_NAME
from .errors import BudgetError, EmbcompressError
from .factorize import FactorizeOptions, convert_factor_dtype, factorize_model, module_stats, rank_limit
from .frequency import token_priority, weights_from_counts
from .kinds import ModelKind, detect_kind, kind_of_class, model_kind
from .methods import get_method
from .methods.grouped import bucket_params
from .options import Options, require
from .outputs import reserve_output
from .progress import LoggingReporter, Reporter
from .report import EvalOptions, ReportOptions, build_report, write_report
from .report.render import glance_markdown
from .selftext import head_input_moment, pooled_sensitivity, random_ids, sample_documents, sample_ids
from .sizes import DENSE, layout_bytes
from .sources import LoadOptions, hf_kwargs, input_paths, load_source, load_tokenizer, model_class, resolve_source
from .spectral import weighted_singular_values
from .surgery import find_targets
from .threads import torch_threads

logger = logging.getLogger(__name__)

#: Candidate numbers of dense (most frequent) rows tried by :func:`choose_layout` (with fractions of the vocabulary).
DENSE_CANDIDATES = (0, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000)
#: Smallest rank worth keeping for the low-rank rows.
MIN_TAIL_RANK = 8
#: Self-sampled text of the transform code's calibration metric (documents x tokens).
CALIBRATION_DOCS, CALIBRATION_TOKENS = 32, 128
#: Weight of the identity in an encoder's error metric (MiniLM 8x, pooled cosine on three corpora: 0.99823 /
#: 0.99823 / 0.99853 with 0.3, 0.99818 / 0.99805 / 0.99842 with 0.5; benchmarks/results/codec_research.md).
ENCODER_METRIC_SHRINK = 0.3
#: Self-sampled text of the out-of-domain column when no --ood-data is given (documents x tokens).
OOD_DOCS, OOD_TOKENS = 40, 128
#: The out-of-domain report, beside ``embcompress_report.json``.
OOD_REPORT_NAME = "embcompress_report_ood.json"
#: Default distillation minutes per model kind (the whole command must fit 30 / 60 minutes on 2 cores).
DEFAULT_MINUTES = {ModelKind.ENCODER: 15.0, ModelKind.MASKED_LM: 20.0, ModelKind.CAUSAL_LM: 40.0}


@dataclass
class CompressOptions(Options):
    """What ``embcompress compress`` does.

    Attributes:
        ratio: Target compression of the embedding's stored bytes (fp32 dense = 1; 8 is per-row int4's size).
        domain: Frequency-bucket layout planned on ``data``'s token counts (wins on text like ``data``,
            loses on other text) instead of the default transform code, which does not depend on the text.
        data: Text (file, folder, JSONL, parquet): the report's held-out split, distillation, and in
            domain mode the token counts; ``None``: data-free.
        eval_data: Text the report is measured on (default: the held-out split of ``data``).
        ood_data: Text of another kind for the out-of-domain column (default for causal LMs: text the
            original model samples itself; encoders get no such column without it).
        max_minutes: Distillation budget (default per model kind: :data:`DEFAULT_MINUTES`).
        distill: Run the distillation step (``None``: in domain mode; the transform code needs none).
        heldout_fraction: Share of ``data`` documents never trained on (distillation's early
            stopping and the report use them).
        seed: Seed of the fit, the data order and the sampling.
        text_field: Field / column of JSONL or parquet data.
        dense_rows / tail_rank: Fix the layout instead of choosing it from the budget.
        report: Measure and write the report (benchmarks that measure themselves turn it off).
        distill_overrides: Extra :class:`DistillConfig` fields (``batch_size``, ``lr``...).
    """

    ratio: float = 8.0
    domain: bool = False
    data: str | None = None
    eval_data: str | None = None
    ood_data: str | None = None
    max_minutes: float | None = None
    distill: bool | None = None
    heldout_fraction: float = 0.1
    seed: int = 0
    text_field: str | None = None
    dense_rows: int | None = None
    tail_rank: int | None = None
    report: bool = True
    distill_overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        require(self.ratio > 1, "ratio", f"must be above 1 (e.g. 8 for int4's size), got {self.ratio}")
        require(
            self.max_minutes is None or self.max_minutes > 0, "max_minutes", f"must be positive, got {self.max_minutes}"
        )
        self.require_fraction("heldout_fraction")
        for name in ("dense_rows", "tail_rank"):
            value = getattr(self, name)
            require(value is None or value >= 0, name, f"must be >= 0, got {value}")
            require(value is None or self.domain, name, "fixes a --domain layout; add --domain or drop it")

    @property
    def distilling(self) -> bool:
        """Whether the recipe distils: as asked, else only in domain mode."""
        return self.domain if self.distill is None else self.distill

    def check(self) -> None:
        """:meth:`validate`, and the data files hold text (before any model is loaded)."""
        self.validate()
        for path in (self.data, self.eval_data, self.ood_data):
            if path is not None:
                check_data(path, DistillConfig(text_field=self.text_field))


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Frequency buckets (most frequent first), each stored whole (``"dense"``) or at its own rank."""

    sizes: list[int]
    ranks: list[int | str]
    nbytes: int
    lost: float | None = None

    @property
    def dense(self) -> int:
        """Rows stored whole."""
        return sum(n for n, r in zip(self.sizes, self.ranks, strict=True) if r == DENSE)

    def method_options(self) -> dict[str, Any]:
        """The ``grouped`` method's options for this layout."""
        return {"buckets": list(self.sizes), "bucket_ranks": list(self.ranks)}

    def describe(self) -> str:
        buckets = zip(self.sizes, self.ranks, strict=True)
        return " + ".join(f"{n:,} whole" if r == DENSE else f"{n:,} at rank {r}" for n, r in buckets)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dense": self.dense, "description": self.describe()}


def layout_params(cols: int, sizes: list[int], ranks: list[int | str]) -> int:
    return sum(bucket_params(n, r, cols) for n, r in zip(sizes, ranks, strict=True))


def max_layout_params(rows: int, cols: int) -> int:
    """The parameter budget ``grouped`` accepts at its largest admissible rank (the break-even one)."""
    return rank_limit(rows, cols, get_method("grouped")) * (rows + cols)


def _candidates(rows: int) -> list[tuple[int, int]]:
    """(dense rows, mid-bucket rows) pairs tried; the rest of the vocabulary is the tail bucket."""
    dense = sorted({c for c in (*DENSE_CANDIDATES, *(rows // d for d in (64, 32, 16, 8, 4, 2))) if 0 <= c < rows})
    return sorted({(k, mid) for k in dense for mid in (0, k, 2 * k, 3 * k) if k + mid < rows})


def _allocate(
    spectra: list[torch.Tensor], sizes: list[int], cols: int, budget: int, max_params: int, fixed: int
) -> list[int] | None:
    """Greedy ranks for the low-rank buckets: each step adds the rank with the most kept weighted
    energy per byte, within ``budget`` bytes and ``max_params`` parameters (``fixed`` already used)."""
    used = [sum(n * 5 + cols + 4 for n in sizes), fixed + sum(n + cols for n in sizes)]
    if used[0] > budget or used[1] > max_params:
        return None
    # a rank whose factors outgrow the bucket's whole rows is never worth it
    buckets = [
        RankBucket(s, (n + cols + 4, n + cols), min(len(s), cols, (n * cols) // (n + cols + 4)))
        for s, n in zip(spectra, sizes, strict=True)
    ]
    return greedy_ranks(buckets, [budget, max_params], used)[0]


class _Spectra:
    """Weighted singular values of frequency-ordered row ranges ``[start, stop)``, computed once each."""

    def __init__(self, matrix: torch.Tensor, weights: torch.Tensor, order: torch.Tensor) -> None:
        self.matrix, self.weights, self.order = matrix, weights, order
        self.total = float((matrix.pow(2).sum(1) * weights).sum())
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if (start, stop) not in self._cache:
            rows = self.order[start:stop]
            self._cache[start, stop] = weighted_singular_values(self.matrix[rows], self.weights[rows])
        return self._cache[start, stop]


def _layout_for(spectrum: _Spectra, dense: int, mid: int, target: int) -> Layout | None:
    """The best ranks for buckets ``[dense whole, mid, rest]`` within ``target`` bytes, or None."""
    rows, cols = spectrum.matrix.shape
    sizes = [n for n in (mid, rows - dense - mid) if n > 0]
    bounds = [dense, dense + mid, rows] if mid > 0 else [dense, rows]
    spectra = [spectrum(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    max_params = max_layout_params(rows, cols)
    budget = target - dense * (cols + 4) - 4 * rows
    ranks = _allocate(spectra, sizes, cols, budget, max_params, dense * cols)
    if ranks is None or ranks[-1] < min(MIN_TAIL_RANK, cols):
        return None
    lost = sum(float(s[r:].pow(2).sum()) for s, r in zip(spectra, ranks, strict=True))
    all_sizes = ([dense] if dense else []) + sizes
    all_ranks: list[int | str] = ([DENSE] if dense else []) + list(ranks)
    return Layout(all_sizes, all_ranks, layout_bytes(cols, all_sizes, all_ranks), lost / max(spectrum.total, 1e-30))


def choose_layout(matrix: torch.Tensor, counts: torch.Tensor, target_bytes: int) -> Layout:
    """The bucket layout within ``target_bytes`` that loses the least token-frequency-weighted energy
    (weights: raw counts plus 0.5): up to three buckets by frequency (whole rows, a mid rank, a tail
    rank), bucket sizes from a grid, ranks by a greedy energy-per-byte allocation."""
    rows, cols = matrix.shape
    weights = (counts.double().clamp_min(0) + 0.5).float()
    order = torch.sort(counts, descending=True, stable=True).indices
    spectrum = _Spectra(matrix.detach().float(), weights, order)
    best: Layout | None = None
    for dense, mid in _candidates(rows):
        layout = _layout_for(spectrum, dense, mid, target_bytes)
        if layout is None:
            continue
        logger.debug("layout candidate %s: weighted energy lost %.5f", layout.describe(), layout.lost)
        if best is None or layout.lost < best.lost:  # type: ignore[operator]
            best = layout
    if best is None:
        rank = min(MIN_TAIL_RANK, cols)
        smallest = layout_bytes(cols, [rows], [rank])
        raise BudgetError(
            f"--ratio is too high for a {rows}x{cols} embedding: the smallest layout (rank {rank}) takes "
            f"{smallest:,} bytes; the largest feasible ratio is {math.floor(rows * cols * 4 / smallest * 10) / 10}"
        )
    logger.info("layout: %s, %.2f MB, weighted energy lost %.4f", best.describe(), best.nbytes / 1e6, best.lost)
    return best


def fixed_layout(rows: int, cols: int, dense: int, rank: int) -> Layout:
    """A user-fixed two-bucket layout (``--dense-rows`` / ``--tail-rank``), validated."""
    dense = min(dense, rows)
    if dense >= rows:
        return Layout([rows], [DENSE], layout_bytes(cols, [rows], [DENSE]))
    if not 1 <= rank <= cols:
        raise EmbcompressError(f"--tail-rank must be between 1 and {cols}, got {rank}")
    sizes = [dense, rows - dense] if dense else [rows]
    ranks: list[int | str] = [DENSE, rank] if dense else [rank]
    return Layout(sizes, ranks, layout_bytes(cols, sizes, ranks))


def largest_tail_rank(rows: int, cols: int, dense: int, target: int) -> int:
    """Largest tail rank of a ``[dense whole, rest]`` layout within ``target`` bytes and the dense
    parameter count; 0 when none fits."""
    max_params = max_layout_params(rows, cols)
    best = 0
    for rank in range(1, cols + 1):
        layout = fixed_layout(rows, cols, dense, rank)
        if layout.nbytes > target or layout_params(cols, layout.sizes, layout.ranks) > max_params:
            break
        best = rank
    return best


def prior_counts(rows: int) -> torch.Tensor:
    """Pseudo-counts from the vocabulary order (lower id = more frequent), Zipf-shaped."""
    return 1e6 / (torch.arange(rows, dtype=torch.float64) + 10.0)


# -- pipeline ---------------------------------------------------------------------------------------
@dataclass
class CompressResult:
    """What :func:`compress_model` did (``output``: where :func:`compress_checkpoint` wrote it).

    ``report`` is measured on the held-out split of ``data`` (or ``eval_data``), ``ood_report`` on
    text of another kind (``ood_data``, or text the model sampled itself).
    """

    mode: str
    layout: str
    embedding_bytes: int
    frequency_source: str | None
    summary: dict[str, Any]
    report: dict[str, Any] | None
    ood_report: dict[str, Any] | None = None
    log: str = ""
    output: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": None if self.output is None else str(self.output),
            "mode": self.mode,
            "layout": self.layout,
            "embedding_bytes": self.embedding_bytes,
            "frequency_source": self.frequency_source,
            "summary": self.summary,
            "report": self.report,
            "out_of_domain": self.ood_report,
        }


def frequency_counts(tokenizer: Any, options: CompressOptions, rows: int) -> tuple[torch.Tensor, str]:
    """Token counts of the training split of ``data``, or the vocabulary-order prior without data."""
    if options.data is None:
        logger.warning("no --data: token frequencies come from the vocabulary order; pass --data for better quality")
        return prior_counts(rows), "vocabulary order (no --data)"
    if tokenizer is None:
        raise EmbcompressError("counting token frequencies needs the model's tokenizer, but none could be loaded")
    docs = iter_documents(options.data, options.text_field)
    train = split_documents(docs, "train", options.heldout_fraction, options.seed)
    counts = count_tokens(tokenizer, train, rows, max_tokens=5_000_000)
    return counts.double(), f"train split of {options.data}"


def plan_layout(weight: torch.Tensor, counts: torch.Tensor, options: CompressOptions) -> Layout:
    """The layout for ``weight``: fixed by the options or chosen to fill ``dense bytes / ratio``."""
    rows, cols = weight.shape
    if options.dense_rows is not None and options.tail_rank is not None:
        return fixed_layout(rows, cols, options.dense_rows, options.tail_rank)
    target = int(rows * cols * 4 / options.ratio)
    if options.dense_rows is not None:
        return fixed_layout(rows, cols, options.dense_rows, largest_tail_rank(rows, cols, options.dense_rows, target))
    return choose_layout(weight.detach().float(), counts, target)


def distill_config(model: nn.Module, options: CompressOptions) -> DistillConfig:
    """The distillation settings of the recipe for ``model`` (``distill_overrides`` on top)."""
    config = recipe_distill_config(model_kind(model), max_positions(model), options)
    check_seq_len(model, config)
    return config


def recipe_distill_config(kind: ModelKind, positions: int | None, options: CompressOptions) -> DistillConfig:
    """:func:`distill_config` from the model's kind and position limit (known before it is loaded)."""
    minutes = options.max_minutes if options.max_minutes is not None else DEFAULT_MINUTES[kind]
    seq_len = min(DistillConfig.seq_len, positions or DistillConfig.seq_len)
    base = {"max_minutes": minutes, "heldout_fraction": options.heldout_fraction, "seed": options.seed}
    config = DistillConfig.from_dict(
        {**base, "seq_len": seq_len, "text_field": options.text_field, **options.distill_overrides}
    )
    return config.for_data(options.data)


# -- checks before the model is loaded --------------------------------------------------------------


def smallest_bytes(rows: int, cols: int, domain: bool) -> int:
    """Bytes of the smallest code the recipe can store for a ``rows x cols`` matrix: one band of
    components at one bit (transform code), or every row at the smallest tail rank (``--domain``)."""
    if domain:
        return layout_bytes(cols, [rows], [min(MIN_TAIL_RANK, cols)])
    return total_nbytes(rows, cols, [(BAND, 1)])


def check_budget(rows: int, cols: int, options: CompressOptions) -> None:
    """Refuse a ``--ratio`` whose budget cannot hold the smallest code, or a hidden size the transform
    code cannot take."""
    if not options.domain and cols % BAND:
        raise EmbcompressError(f"the transform code needs a hidden size divisible by {BAND}, got {cols}; pass --domain")
    if options.domain and options.dense_rows is not None:
        return  # a user-fixed layout is checked by plan_layout
    smallest = smallest_bytes(rows, cols, options.domain)
    if rows * cols * 4 / options.ratio < smallest:
        largest = math.floor(rows * cols * 4 / smallest * 10) / 10
        raise BudgetError(
            f"--ratio {options.ratio:g} leaves {int(rows * cols * 4 / options.ratio):,} bytes for a {rows}x{cols} "
            f"embedding, below its smallest code ({smallest:,} bytes); use --ratio {largest:g} or lower"
        )


def check_splits(options: CompressOptions) -> None:
    """The held-out split of ``--data`` must hold text for the report (without ``--eval-data``), its
    training split text for ``--domain`` counts and distillation."""
    if options.data is None:
        return
    train, heldout = split_counts(options.data, options.text_field, options.heldout_fraction, options.seed)
    share = f"--heldout-fraction {options.heldout_fraction:g}"
    if options.report and options.eval_data is None and heldout == 0:
        raise EmbcompressError(
            f"the held-out split ({share}) of --data '{options.data}' is empty ({train} document(s) in all); "
            "the report needs held-out text: add documents (blank-line separated paragraphs) or pass --eval-data"
        )
    if (options.domain or options.distilling) and train == 0:
        raise EmbcompressError(
            f"the training split of --data '{options.data}' is empty ({heldout} held-out document(s)); add "
            "documents (blank-line separated paragraphs) or lower --heldout-fraction"
        )


def check_training_windows(tokenizer: Any, kind: ModelKind, positions: int | None, options: CompressOptions) -> None:
    """Distillation needs one batch of training windows from ``--data``: tokenized until that many are found."""
    config = recipe_distill_config(kind, positions, options)
    check_training_text(options.data, tokenizer, config, kind, "pass --no-distill")  # type: ignore[arg-type]


def check_before_loading(model_name: str, options: CompressOptions, load: LoadOptions) -> None:
    """Everything the config, the tokenizer and the text can tell in seconds, before the weights are loaded:
    budget, hidden size, data splits, enough training text (``options`` already checked their own values and
    that the data holds UTF-8 text). A config that cannot be read is left to the loader."""
    check_splits(options)
    source = resolve_source(model_name, load.gguf_file)
    try:
        kwargs = hf_kwargs(source, load.trust_remote_code)
        hf_config = transformers.AutoConfig.from_pretrained(str(source.path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        return
    text = hf_config.get_text_config()
    rows, cols = getattr(text, "vocab_size", None), getattr(text, "hidden_size", None)
    if isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0:
        check_budget(rows, cols, options)
    kind = kind_of_class(model_class(hf_config, bool(source.gguf_file)).__name__, hf_config.is_encoder_decoder)
    if options.data is not None and options.distilling and kind is not None:
        tokenizer = load_tokenizer(source, load.trust_remote_code)
        if tokenizer is not None:
            check_training_windows(tokenizer, kind, config_positions(text), options)


def original_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The embedding matrices the recipe replaces, by module path. Factorizing swaps modules and never
    writes to these tensors, so holding them costs no copy."""
    targets = find_targets(model)
    out = {targets.input_path: targets.input_module.weight.detach()}
    if targets.output_module is not None and targets.output_path is not None:
        out[targets.output_path] = targets.output_module.weight.detach()
    return out


def final_module_stats(
    student: nn.Module,
    originals: dict[str, torch.Tensor],
    modules: list[dict[str, Any]],
    counts: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Module statistics re-measured on the final (distilled, re-stored) factors against the
    ``originals`` (:func:`original_matrices`), frequency-weighted when ``counts`` are given."""
    weights = weights_from_counts(counts.float(), 0.5, 0.1) if counts is not None else None
    out = []
    for stats in modules:
        if stats.get("tied_to"):
            out.append(dict(stats))
            continue
        module = student.get_submodule(stats["path"])
        source = getattr(module, "source", module)
        original = originals[stats["path"]]
        serving_dense = bool(stats.get("serving_dense", False))
        out.append(module_stats(source.spec, original, source, weights, serving_dense).to_dict())
    return out


def _domain_factorize(
    model: nn.Module, tokenizer: Any, options: CompressOptions, float_dtype: str, reporter: Reporter
) -> tuple[dict[str, Any], Layout, torch.Tensor, str]:
    """Domain mode: frequency buckets planned on ``data``'s token counts, grouped factors fitted in place."""
    weight = model.get_input_embeddings().weight
    with reporter.stage("counting token frequencies"):
        counts, origin = frequency_counts(tokenizer, options, weight.shape[0])
    with reporter.stage("choosing the layout"):
        layout = plan_layout(weight, counts, options)
    rows, cols = weight.shape
    fopts = FactorizeOptions(
        method="grouped",
        rank=rank_limit(rows, cols, get_method("grouped")),
        factor_dtype=float_dtype,
        seed=options.seed,
        method_options=layout.method_options(),
    )
    with reporter.stage("fitting the grouped factors"):
        result = factorize_model(model, fopts, row_weights=weights_from_counts(counts.float(), 0.5, 0.1))
    return {**result.to_dict(), "options": fopts.to_dict()}, layout, counts, origin


def calibration_metric(model: nn.Module, tokenizer: Any, options: CompressOptions) -> tuple[torch.Tensor | None, str]:
    """The error metric of the transform code and how it was measured, from nothing the user gives.

    * An LM head (tied or not): ``E[h h^T]`` of the hidden states it sees -- on text a causal LM samples
      itself, on random tokens for a masked LM -- since a row's logit error is ``h . (e - e_hat)``.
    * A bare encoder: ``E[J^T J]``, ``J`` the sensitivity of the normalised mean-pooled output to an input
      embedding, on random tokens, blended with the identity (weight :data:`ENCODER_METRIC_SHRINK`): random
      tokens mis-predict real text, and the blend measured better on every corpus (docs/compress.md).
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    tokens = min(CALIBRATION_TOKENS, (max_positions(model) or CALIBRATION_TOKENS + 2) - 2)
    causal = detect_kind(model) == ModelKind.CAUSAL_LM and tokenizer is not None
    if model.get_output_embeddings() is not None:
        if causal:
            ids = sample_ids(model, tokenizer, CALIBRATION_DOCS, tokens, seed=options.seed)
            where = f"{ids[:, 1:].numel()} tokens the model sampled itself"
        else:
            ids = random_ids(tokenizer, vocab, CALIBRATION_DOCS, tokens, seed=options.seed)
            where = f"{ids.numel()} random tokens"
        return head_input_moment(model, ids), f"E[h h^T] of the LM head's input on {where}"
    ids = random_ids(tokenizer, vocab, CALIBRATION_DOCS, tokens, seed=options.seed)
    sensitivity = pooled_sensitivity(model, ids)
    identity = torch.eye(sensitivity.shape[0], dtype=sensitivity.dtype)
    shrink = ENCODER_METRIC_SHRINK
    metric = (1 - shrink) * sensitivity / (sensitivity.trace() / sensitivity.shape[0]) + shrink * identity
    return metric, f"pooled-output sensitivity on {ids.numel()} random tokens, {shrink:.0%} identity"


def _robust_factorize(
    model: nn.Module, tokenizer: Any, options: CompressOptions, float_dtype: str, reporter: Reporter
) -> tuple[dict[str, Any], str]:
    """Default mode: the transform code within ``dense bytes / ratio``, independent of any text."""
    fopts = FactorizeOptions(method="transform", ratio=options.ratio, factor_dtype=float_dtype, seed=options.seed)
    priority = token_priority(tokenizer, model.get_input_embeddings().weight.shape[0])
    with torch_threads(1):  # the same seed writes the same bytes whatever --threads says
        with reporter.stage("measuring the error metric"):
            metric, measured = calibration_metric(model, tokenizer, options)
        with reporter.stage("transform-coding the embeddings"):
            result = factorize_model(model, fopts, metric=metric, priority=priority)
    options_of = model.get_input_embeddings().spec.options
    head = options_of.get("head_rows", 0)
    layout = "transform code: " + (f"{head:,} most frequent rows (vocabulary order) at int8, the rest " if head else "")
    layout += " + ".join(f"{n} components x {b} bits" for n, b in options_of["groups"])
    layout += f"; error metric: {measured}"
    return {**result.to_dict(), "options": fopts.to_dict()}, layout


def compress_model(
    model: nn.Module,
    tokenizer: Any,
    options: CompressOptions,
    model_name: str = "model",
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> CompressResult:
    """Run the recipe on ``model`` in place: compress -> (distill) -> final storage -> reports.

    Default: the transform code, which needs no text. ``options.domain``: frequency buckets planned on
    ``options.data``. The teacher is a copy of ``model`` taken before anything changes; options and the
    model are checked before that; without distillation or reports no teacher is kept, only references
    to the original matrices. ``model_name`` names the teacher in the summary and the reports.
    """
    reporter = reporter or LoggingReporter()
    options.check()
    model_kind(model, "compress")
    config = distill_config(model, options) if options.distilling else None
    teacher = copy.deepcopy(model) if config is not None or options.report else None
    originals = original_matrices(teacher or model)
    final_dtype = "int8" if options.domain else "float16"
    train_dtype = "float32" if config is not None else final_dtype
    counts, origin, buckets = None, None, {}
    if options.domain:
        summary, plan, counts, origin = _domain_factorize(model, tokenizer, options, train_dtype, reporter)
        layout = f"{plan.describe()} (tokens by frequency), int8"
        buckets = {"buckets": plan.to_dict()}
    else:
        summary, layout = _robust_factorize(model, tokenizer, options, train_dtype, reporter)
    summary["source"] = model_name
    log = ""
    if config is not None and teacher is not None:
        result = distill_model(
            model, teacher, tokenizer, config, options.data, teacher_name=model_name,
            accelerator=make_accelerator(device), reporter=reporter,
        )  # fmt: skip
        summary["distill"] = {**result.to_dict(), "config": config.to_dict(), "teacher": model_name}
        summary["distill"]["data"] = options.data
        log = result.log
    if train_dtype != final_dtype:
        with reporter.stage(f"storing the factors as {final_dtype}"):
            convert_factor_dtype(model, final_dtype)
    summary["recipe"] = {"options": options.to_dict(), "layout": layout, "frequency": origin, **buckets}
    if config is not None or train_dtype != final_dtype:  # the factors changed since the fit measured them
        summary["modules"] = final_module_stats(model, originals, summary.get("modules", []), counts)
    embedding_bytes = sum(m["bytes_after"] for m in summary["modules"])
    report = ood = None
    if teacher is not None and options.report:
        report = _report(model, teacher, tokenizer, options, model_name, reporter)
        ood = _ood_report(model, teacher, tokenizer, options, model_name, reporter)
    mode = "domain" if options.domain else "robust"
    return CompressResult(mode, layout, embedding_bytes, origin, summary, report, ood, log)


def _report(
    student: nn.Module, teacher: nn.Module, tokenizer: Any, options: CompressOptions, name: str, reporter: Reporter
) -> dict[str, Any]:
    held = None if options.eval_data is not None else options.heldout_fraction
    report_options = ReportOptions(
        eval=EvalOptions(), text_field=options.text_field, heldout_fraction=held, split_seed=options.seed
    )
    return build_report(
        student,
        teacher,
        tokenizer,
        options.eval_data or options.data,
        report_options,
        student_name=f"{name} (compressed)",
        teacher_name=name,
        reporter=reporter,
    )


def _ood_report(
    student: nn.Module, teacher: nn.Module, tokenizer: Any, options: CompressOptions, name: str, reporter: Reporter
) -> dict[str, Any] | None:
    """The same comparison on text of another kind: ``ood_data``, or for causal LMs text the teacher samples."""
    if options.ood_data is None and (tokenizer is None or detect_kind(teacher) != ModelKind.CAUSAL_LM):
        return None
    with tempfile.TemporaryDirectory() as work:
        path = options.ood_data
        if path is None:
            with reporter.stage("sampling out-of-domain text from the original model"):
                docs = sample_documents(teacher, tokenizer, OOD_DOCS, OOD_TOKENS, seed=options.seed + 1)
            path = str(Path(work) / "self-sampled.txt")
            Path(path).write_text("\n\n".join(docs) + "\n")
        ood_options = ReportOptions(eval=EvalOptions(), speed=False, text_field=options.text_field)
        try:
            report = build_report(student, teacher, tokenizer, path, ood_options, reporter=reporter)
        except EmbcompressError as exc:
            if options.ood_data is not None:
                raise
            logger.warning("no out-of-domain column: the self-sampled text could not be evaluated (%s)", exc)
            return None
    out = {k: report[k] for k in ("data", "task", "behaviour", "references", "glance")}
    out["source"] = options.ood_data or f"{OOD_DOCS} documents of {OOD_TOKENS} tokens sampled from {name}"
    return out


def domain_warning(result: CompressResult) -> str | None:
    """Domain mode's one-line warning with its measured out-of-domain cost (``None`` in robust mode)."""
    if result.mode != "domain":
        return None
    ood = result.ood_report
    if ood is None or ood.get("behaviour") is None:
        return (
            "warning: domain mode plans bytes on the token counts of --data; on other text it can lose to "
            "4-bit quantization. Pass --ood-data to measure that cost."
        )
    glance = ood["glance"]
    rows = {r["name"]: r["value"] for r in glance["rows"]}
    better = "higher" if glance["higher_is_better"] else "lower"
    return (
        f"warning: domain mode; on out-of-domain text ({ood['source']}) {glance['metric']} is "
        f"{rows['student']:.4g} against Q4_0's {rows.get('q4_0', float('nan')):.4g} and per-row int4's "
        f"{rows.get('int4', float('nan')):.4g} ({better} is better)"
    )


def quality_markdown(result: CompressResult) -> str | None:
    """The model card's quality section: the in-domain and out-of-domain at-a-glance tables."""
    parts = []
    if result.report is not None:
        parts.append(glance_markdown(result.report))
    if result.ood_report is not None and result.ood_report.get("behaviour") is not None:
        parts.append(f"Out of domain: {result.ood_report['source']}.\n\n{glance_markdown(result.ood_report)}")
    if warning := domain_warning(result):
        parts.append(f"**{warning}**")
    return "\n\n".join(parts) if parts else None


def compress_checkpoint(
    model_name: str,
    out: str | Path,
    options: CompressOptions,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> CompressResult:
    """Load ``model_name`` once, :func:`compress_model` it, and write the checkpoint (with its reports,
    model card and distillation log) to ``out`` atomically.

    Options, data and output are checked before any model is loaded; ``out`` appears only when
    everything worked.
    """
    reporter = reporter or LoggingReporter()
    load = load or LoadOptions()
    out_path = Path(out)
    options.check()
    check_output_dir(out_path, overwrite)
    check_before_loading(model_name, options, load)
    data = [options.data, options.eval_data, options.ood_data]
    inputs = input_paths(model_name, paths=data, gguf_file=load.gguf_file)
    with reserve_output(out_path, overwrite, inputs):
        source, model, tokenizer = load_source(model_name, load, reporter)
        result = compress_model(model, tokenizer, options, source.name, load.device, reporter)
        result.output = out_path

        def extra(folder: Path) -> None:
            if result.report is not None:
                write_report(folder, result.report)
            if result.ood_report is not None:
                write_json(folder / OOD_REPORT_NAME, result.ood_report)
            if result.log:
                (folder / LOG_NAME).write_text(result.log)

        with reporter.stage(f"writing {out_path}"):
            card = quality_markdown(result)
            write_checkpoint(model, out_path, source, tokenizer, result.summary, overwrite, extra, card)
    return result
