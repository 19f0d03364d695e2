"""Budget resolution: rank, energy (plain and weighted) and byte-ratio budgets, and impossible budgets."""

from __future__ import annotations

import pytest
import torch

from embcompress.budget import budget_from, rank_for_energy_budget, resolve_rank, spectrum
from embcompress.config import ModuleSpec
from embcompress.errors import BudgetError, EmbcompressError
from embcompress.factorize import FactorizeOptions, factorize_model, plan
from embcompress.methods import get_method
from embcompress.spectral import energy_curve, singular_values
from helpers.models import HIDDEN, VOCAB, make_tiny

DENSE_BYTES = VOCAB * HIDDEN * 4


def _weight() -> torch.Tensor:
    return make_tiny("llama-tied").get_input_embeddings().weight.detach()


def _spec(method: str = "svd", factor_dtype: str = "float32", options: dict | None = None) -> ModuleSpec:
    return ModuleSpec(
        "model.embed_tokens", "input", method, 1, VOCAB, HIDDEN, factor_dtype=factor_dtype, options=options or {}
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 4, "energy": 0.9}, "only one of --rank, --energy, --ratio"),
        ({"energy": 0.0}, r"--energy must be in \(0, 1\]"),
        ({"energy": 1.5}, r"--energy must be in \(0, 1\]"),
        ({"ratio": 1.0}, "--ratio must be greater than 1"),
        ({"ratio": -2.0}, "--ratio must be greater than 1"),
    ],
)
def test_bad_budget_values(kwargs: dict, message: str) -> None:
    args = {"rank": None, "energy": None, "ratio": None, **kwargs}
    with pytest.raises(BudgetError, match=message):
        budget_from(**args)


def test_energy_budget_is_smallest_rank_keeping_energy() -> None:
    weight = _weight()
    curve = energy_curve(singular_values(weight))
    for energy in (0.3, 0.6, 0.8):
        rank = resolve_rank(budget_from(None, energy, None), _spec(), weight, get_method("svd"), 13)
        assert curve[rank - 1] >= energy - 1e-6
        assert rank == 1 or curve[rank - 2] < energy


def test_energy_above_break_even_names_nearest_feasible_value() -> None:
    s = singular_values(_weight())
    best = float(energy_curve(s)[12])
    with pytest.raises(
        BudgetError, match=r"above its break-even rank 13; the nearest feasible value is --energy 0\.\d+"
    ):
        rank_for_energy_budget(0.999, s, 13, "input")
    assert rank_for_energy_budget(best - 1e-3, s, 13, "input") <= 13


def test_weighted_energy_uses_weighted_spectrum() -> None:
    weight = _weight()
    weights = torch.zeros(VOCAB)
    weights[:3] = 1.0  # only three rows matter: rank 3 keeps all weighted energy
    assert spectrum(weight, get_method("weighted-svd"), weights)[3:].abs().max() < 1e-3
    rank = resolve_rank(
        budget_from(None, 1.0, None), _spec("weighted-svd"), weight, get_method("weighted-svd"), 13, weights
    )
    assert rank <= 3


@pytest.mark.parametrize("factor_dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("method", ["svd", "nmf", "nonlinear", "grouped"])
def test_ratio_budget_meets_ratio_with_largest_rank(method: str, factor_dtype: str) -> None:
    m = get_method(method)
    options = {"buckets": [12, "rest"]} if method == "grouped" else {}
    spec = _spec(method, factor_dtype, options)
    rank = resolve_rank(budget_from(None, None, 3.0), spec, _weight(), m, 13)
    nbytes = m.stored_bytes(ModuleSpec(**{**spec.to_dict(), "rank": rank}))
    assert DENSE_BYTES / nbytes >= 3.0
    if rank < 13:
        bigger = m.stored_bytes(ModuleSpec(**{**spec.to_dict(), "rank": rank + 1}))
        assert DENSE_BYTES / bigger < 3.0


def test_int8_factors_allow_higher_rank_at_same_ratio() -> None:
    ranks = {
        dtype: resolve_rank(budget_from(None, None, 4.0), _spec("svd", dtype), _weight(), get_method("svd"), 13)
        for dtype in ("float32", "int8")
    }
    assert ranks["int8"] > ranks["float32"]


def test_unreachable_ratio_names_nearest_feasible_value() -> None:
    with pytest.raises(
        BudgetError, match=r"--ratio 50.0 is not reachable .* nearest feasible value is --ratio \d+\.\d"
    ):
        resolve_rank(budget_from(None, None, 50.0), _spec(), _weight(), get_method("svd"), 13)


def test_plan_resolves_budget_and_reports_it() -> None:
    model = make_tiny("llama-untied")
    result = factorize_model(model, FactorizeOptions(energy=0.5, rank_output=3))
    ranks = {m.role: m.rank for m in result.modules}
    assert ranks["output"] == 3
    assert result.budget["mode"] == "energy" and result.budget["value"] == 0.5
    assert result.budget["ranks"] == ranks
    assert result.to_dict()["budget"]["ranks"]["input"] == ranks["input"]


def test_plan_without_budget_is_an_error() -> None:
    with pytest.raises(BudgetError, match="pass --rank, --energy or --ratio"):
        plan(make_tiny("llama-tied"), FactorizeOptions())


def test_grouped_rank_too_small_for_buckets() -> None:
    options = FactorizeOptions(method="grouped", rank=1, method_options={"buckets": [12, "rest"]})
    with pytest.raises(BudgetError, match="nearest feasible value is --rank 2"):
        plan(make_tiny("llama-tied"), options, torch.ones(VOCAB))


def test_buckets_not_covering_vocabulary() -> None:
    options = FactorizeOptions(method="grouped", rank=4, method_options={"buckets": [12, 40]})
    with pytest.raises(EmbcompressError, match=f"cover 52 of the {VOCAB} vocabulary rows"):
        plan(make_tiny("llama-tied"), options, torch.ones(VOCAB))
