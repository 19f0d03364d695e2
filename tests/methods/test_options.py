"""Method options parsed from command-line text."""

from __future__ import annotations

import pytest

from embcompress.errors import EmbcompressError
from embcompress.methods import parse_method_options, parse_value


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
