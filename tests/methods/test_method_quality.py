"""Fidelity of each method: monotone in rank, weighted optimality, NMF non-negativity and sklearn parity."""

from __future__ import annotations

import itertools

import pytest
import torch

from embcompress.config import ModuleSpec
from embcompress.factorize import FactorizeOptions, factorize_model, relative_error
from embcompress.methods import FitContext, get_method
from embcompress.methods.grouped import GroupedEmbedding, allocate_ranks
from embcompress.methods.nmf import NMFOptions, column_shift
from embcompress.methods.nonlinear import NonlinearEmbedding
from embcompress.sizes import DENSE
from helpers.methods import METHOD_OPTIONS, budget, single_thread, weights_for, zipf_weights
from helpers.models import make_tiny

ROWS, COLS = 96, 16


_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def _matrix(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(ROWS, COLS, generator=gen) @ torch.diag(torch.linspace(2.0, 0.2, COLS))


def _errors(method: str, ranks: list[int]) -> list[float]:
    weight = make_tiny("llama-tied").get_input_embeddings().weight.detach()
    out = []
    for rank in ranks:
        model = make_tiny("llama-tied")
        options = FactorizeOptions(method=method, method_options=METHOD_OPTIONS[method], **budget(method, rank))
        factorize_model(model, options, row_weights=weights_for(method))
        weights = weights_for(method)
        out.append(relative_error(weight, model.get_input_embeddings(), weights))
    return out


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_error_decreases_with_rank(method: str) -> None:
    errors = _errors(method, [2, 3, 5, 8])
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.75


def test_weighted_svd_beats_svd_on_weighted_error() -> None:
    matrix, weights = _matrix(), zipf_weights()
    for rank in (1, 3, 6):
        plain = get_method("svd").fit(matrix, rank, FitContext()).reconstruct()
        weighted = get_method("weighted-svd").fit(matrix, rank, FitContext(row_weights=weights)).reconstruct()

        def werr(approx: torch.Tensor) -> float:
            return float(((matrix - approx).pow(2).sum(1) * weights).sum())

        assert werr(weighted) < werr(plain)
        # and plain SVD stays the unweighted optimum
        assert (matrix - plain).norm() <= (matrix - weighted).norm() + 1e-5


def test_weighted_svd_is_optimal_against_perturbation() -> None:
    matrix, weights = _matrix(1), zipf_weights()
    factors = get_method("weighted-svd").fit(matrix, 3, FitContext(row_weights=weights))
    base = float(((matrix - factors.reconstruct()).pow(2).sum(1) * weights).sum())
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        basis = factors.basis + 0.05 * torch.randn(factors.basis.shape, generator=gen)
        codes = torch.linalg.lstsq(basis.T, matrix.T).solution.T  # best codes for the perturbed basis
        assert float(((matrix - codes @ basis).pow(2).sum(1) * weights).sum()) >= base - 1e-4


def test_weighted_svd_with_uniform_weights_equals_svd() -> None:
    matrix = _matrix()
    plain = get_method("svd").fit(matrix, 4, FitContext()).reconstruct()
    weighted = get_method("weighted-svd").fit(matrix, 4, FitContext(row_weights=torch.ones(ROWS))).reconstruct()
    torch.testing.assert_close(plain, weighted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factor_dtype", ["float32", "int8"])
def test_nmf_factors_nonnegative_as_stored(factor_dtype: str) -> None:
    model = make_tiny("llama-tied")
    options = FactorizeOptions(method="nmf", rank=4, factor_dtype=factor_dtype, method_options={"max_iter": 40})
    factorize_model(model, options)
    emb = model.get_input_embeddings()
    assert emb.offset is not None
    for name in ("codes", "basis"):
        stored = getattr(emb, name)
        assert stored.dtype == (torch.int8 if factor_dtype == "int8" else torch.float32)
        assert bool((stored >= 0).all()), name
        assert bool((emb.factor(name) >= 0).all()), name


def test_nmf_shift_makes_matrix_nonnegative() -> None:
    matrix = _matrix()
    shift = column_shift(matrix)
    assert bool((matrix + shift >= 0).all())
    assert bool((shift >= 0).all())


def test_nmf_hals_close_to_sklearn() -> None:
    matrix = _matrix(3)
    errs = {}
    for solver in ("hals", "sklearn"):
        ctx = FitContext(options=NMFOptions(solver=solver, max_iter=300))
        errs[solver] = float((matrix - get_method("nmf").fit(matrix, 6, ctx).reconstruct()).norm() / matrix.norm())
    assert errs["hals"] <= errs["sklearn"] * 1.05, errs


def test_grouped_allocation_meets_budget_and_prefers_dense_head() -> None:
    sizes, cols = [8, 88], COLS
    # head bucket: large energy spread over all directions; tail: one dominant direction
    spectra = [torch.full((8,), 10.0), torch.tensor([5.0] + [0.01] * 15)]
    budget = 4 * (96 + cols)
    ranks = allocate_ranks(spectra, sizes, cols, budget)
    used = sum(n * cols if r == DENSE else int(r) * (n + cols) for n, r in zip(sizes, ranks, strict=True))
    assert used <= budget
    assert ranks[0] == DENSE


def test_grouped_module_lm_head_never_builds_dense_for_linear_buckets() -> None:
    model = make_tiny("llama-tied")
    options = FactorizeOptions(
        method="grouped", rank=4, method_options={"buckets": [12, "rest"], "bucket_ranks": [3, 2]}
    )
    factorize_model(model, options, row_weights=zipf_weights())
    emb = model.get_input_embeddings()
    assert isinstance(emb, GroupedEmbedding)
    assert emb.ranks == [3, 2] and emb.sizes == [12, 84]
    called = []
    emb.dense_rows = lambda *a: called.append(a)  # type: ignore[method-assign]
    hidden = torch.randn(2, 5, COLS)
    logits = emb.project(hidden)
    assert not called and logits.shape == (2, 5, ROWS)
    del emb.dense_rows
    torch.testing.assert_close(logits, hidden @ emb.dense().T, rtol=1e-5, atol=1e-5)


def test_grouped_most_frequent_tokens_in_first_bucket() -> None:
    weights = zipf_weights()
    model = make_tiny("llama-tied")
    options = FactorizeOptions(method="grouped", rank=4, method_options={"buckets": [12, "rest"]})
    factorize_model(model, options, row_weights=weights)
    emb = model.get_input_embeddings()
    top = set(torch.topk(weights, 12).indices.tolist())
    assert set(emb.perm[:12].tolist()) == top
    assert model.config.quantization_config.compression.modules[0].options["bucket_sizes"] == [12, 84]


def test_nonlinear_improves_on_svd_start_and_reports_progress() -> None:
    matrix = _matrix(4)
    spec = ModuleSpec("x", "input", "nonlinear", 3, ROWS, COLS, options={"steps": 40, "depth": 2, "groups": 2})
    seen: list[tuple[int, int, dict[str, float]]] = []
    module = get_method("nonlinear").build(spec, matrix, FitContext(progress=lambda s, t, m: seen.append((s, t, m))))
    assert isinstance(module, NonlinearEmbedding)
    svd = get_method("svd").fit(matrix, 3, FitContext()).reconstruct()
    assert (matrix - module.dense()).norm() < (matrix - svd).norm()
    assert len(seen) == 40 and seen[-1][:2] == (40, 40) and "loss" in seen[-1][2]
    assert seen[-1][2]["loss"] < seen[0][2]["loss"]


def test_nonlinear_project_matches_dense() -> None:
    spec = ModuleSpec("x", "input", "nonlinear", 3, ROWS, COLS, options={"steps": 5})
    module = get_method("nonlinear").build(spec, _matrix(), FitContext())
    hidden = torch.randn(4, COLS)
    torch.testing.assert_close(module.project(hidden), hidden @ module.dense().T)
    assert get_method("nonlinear").serving_dense and not get_method("svd").serving_dense
