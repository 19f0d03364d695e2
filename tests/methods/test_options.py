"""Method options parsed from command-line text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from embcompress.errors import EmbcompressError
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.methods import FitContext, get_method, method_names, parse_method_options, parse_value
from embcompress.methods.base import MethodOptions
from embcompress.methods.nmf import NMFOptions
from embcompress.methods.nonlinear import DecoderOptions
from embcompress.methods.svd import SVDOptions
from helpers.models import make_tiny


def test_values_become_numbers_booleans_and_lists() -> None:
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("4000,rest") == [4000, "rest"] and parse_value("relu") == "relu"


def test_pairs_and_grouped_shortcuts() -> None:
    options = parse_method_options(["max_iter=300", "solver = auto"], "4000,rest", "dense,64")
    assert options == {"max_iter": 300, "solver": "auto", "buckets": [4000, "rest"], "bucket_ranks": ["dense", 64]}


@pytest.mark.parametrize("pair", ["max_iter", "=3", ""])
def test_a_pair_without_key_or_value_is_refused(pair: str) -> None:
    with pytest.raises(EmbcompressError, match="--option expects KEY=VALUE"):
        parse_method_options([pair])


# -- typed options per method ---------------------------------------------------------------------

#: A non-default value for each method's options (round trip and checkpoint tests).
CUSTOM: dict[str, dict[str, Any]] = {
    "svd": {"solver": "gram"},
    "weighted-svd": {"solver": "full"},
    "grouped": {"buckets": [12, "rest"], "bucket_ranks": ["dense", 2], "solver": "gram"},
    "nmf": {"solver": "sklearn", "max_iter": 7, "tol": 1e-3},
    "nonlinear": {"hidden": 8, "depth": 2, "groups": 2, "activation": "gelu", "steps": 3, "lr": 0.01},
    "transform": {"bits_per_weight": 3.5, "max_bits": 6, "iters": 3},
}


def test_every_method_declares_a_typed_options_class() -> None:
    assert set(CUSTOM) == set(method_names())
    for name in method_names():
        cls = get_method(name).options_class
        assert issubclass(cls, MethodOptions) and cls is not MethodOptions
        assert get_method(name).parse_options() == cls()


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_options_round_trip(name: str) -> None:
    method = get_method(name)
    options = method.parse_options(CUSTOM[name])
    assert isinstance(options, method.options_class)
    assert type(options).from_dict(options.to_dict()) == options
    assert method.parse_options(options.to_dict()) == options
    assert method.parse_options(options) is options
    for key, value in CUSTOM[name].items():
        assert getattr(options, key) == value


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_unknown_option_lists_the_allowed_ones(name: str) -> None:
    method = get_method(name)
    allowed = ", ".join(sorted(method.options_class.field_names()))
    with pytest.raises(
        EmbcompressError, match=rf"^method '{name}' does not take option\(s\) bogus; allowed: {allowed}$"
    ):
        method.parse_options({"bogus": 1, **CUSTOM[name]})
    cls = method.options_class
    listed = ", ".join(cls.field_names())
    with pytest.raises(EmbcompressError, match=rf"^unknown {cls.__name__} field\(s\) bogus; allowed: {listed}$"):
        cls.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("svd", {"solver": "magic"}, "unknown SVD solver 'magic'; valid: auto, gram, randomized, full"),
        ("weighted-svd", {"solver": 3}, "unknown SVD solver '3'"),
        ("nmf", {"solver": "magic"}, "unknown nmf solver 'magic'; valid: hals, sklearn"),
        ("nmf", {"max_iter": 0}, "nmf option max_iter must be at least 1"),
        ("nmf", {"tol": 0}, "nmf option tol must be positive"),
        ("nmf", {"max_iter": "many"}, "nmf option max_iter must be an integer, got 'many'"),
        ("nmf", {"max_iter": 2.5}, "nmf option max_iter must be an integer, got 2.5"),
        ("grouped", {"buckets": []}, "grouped: 'buckets' is empty"),
        ("grouped", {"buckets": [10, "x", "rest"]}, "bucket size 'x' is not a positive integer or 'rest'"),
        ("grouped", {"buckets": [10, "rest"], "bucket_ranks": [2]}, "grouped: 1 bucket_ranks for 2 buckets"),
        ("grouped", {"bucket_ranks": ["dense", 0]}, "grouped: bucket rank 0 must be at least 1"),
        ("grouped", {"solver": "magic"}, "unknown SVD solver 'magic'"),
        ("nonlinear", {"hidden": 7, "groups": 2}, "nonlinear: hidden 7 is not divisible by groups 2"),
        ("nonlinear", {"activation": "swish"}, "unknown activation 'swish'"),
        ("nonlinear", {"depth": 0}, "depth, groups must be >= 1"),
        ("nonlinear", {"steps": True}, "nonlinear option steps must be an integer, got True"),
    ],
)
def test_bad_option_values_fail_when_parsed(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(EmbcompressError, match=re.escape(message)):
        get_method(name).parse_options(options)


def test_command_line_values_are_converted_to_the_field_types() -> None:
    opts = get_method("nonlinear").parse_options(parse_method_options(["lr=1", "steps=4", "cosine=0"]))
    assert isinstance(opts, DecoderOptions) and opts.lr == 1.0 and isinstance(opts.lr, float) and opts.steps == 4
    nmf = get_method("nmf").parse_options({"max_iter": 20.0, "tol": "1e-4"})
    assert isinstance(nmf, NMFOptions) and nmf.max_iter == 20 and nmf.tol == 1e-4


def test_progress_total_takes_the_typed_options() -> None:
    nonlinear = get_method("nonlinear")
    assert nonlinear.progress_total(DecoderOptions(steps=12)) == 12
    assert get_method("svd").progress_total(SVDOptions()) is None


def test_fit_context_options_are_typed_and_default_to_the_spec_or_defaults() -> None:
    method = get_method("nmf")
    assert method.options_of(FitContext()) == NMFOptions()
    assert method.options_of(FitContext(options=NMFOptions(max_iter=3))).max_iter == 3
    with pytest.raises(EmbcompressError, match="method 'nmf' takes NMFOptions, not SVDOptions"):
        method.options_of(FitContext(options=SVDOptions()))


def test_checkpoint_spec_keeps_the_options_as_given() -> None:
    nmf = factorize_model(
        make_tiny("llama-tied"), FactorizeOptions(method="nmf", rank=4, method_options={"max_iter": 5})
    )
    assert nmf.config.modules[0].options == {"max_iter": 5}
    assert factorize_model(make_tiny("llama-tied"), FactorizeOptions(rank=4)).config.modules[0].options == {}
