"""The checkpoint validator on crafted ``quantization_config`` sections and weights files: every
problem is one :class:`CheckpointError` line naming the field or tensor and what to do."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from embcompress.checkpoint import save_model_files
from embcompress.errors import CheckpointError
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.validation import check_checkpoint, parse_config, read_compression_config
from helpers.models import make_tiny


@pytest.fixture(scope="module")
def section(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real ``quantization_config`` section (tiny untied Llama: an input module and an output module)."""
    model = make_tiny("llama-untied")
    factorize_model(model, FactorizeOptions(rank=4))
    folder = tmp_path_factory.mktemp("valid") / "ckpt"
    folder.mkdir()
    save_model_files(model, folder)
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def _module(i: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda s: s["modules"][i].update(fields)


CRAFTED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "rank string": (_module(0, rank="abc"), r"modules\[0\] .*field 'rank' is \"abc\"; allowed: an integer"),
    "rank bool": (_module(0, rank=True), r"'rank' is true; allowed: an integer"),
    "rank zero": (_module(0, rank=0), r"'rank' is 0; allowed: a positive integer"),
    "modules null": (lambda s: s.update(modules=None), r"'modules' is null; allowed: a non-empty list"),
    "modules empty": (lambda s: s.update(modules=[]), r"'modules' is \[\]; allowed: a non-empty list"),
    "module string": (lambda s: s["modules"].__setitem__(0, "x"), r"'modules\[0\]' is \"x\"; allowed: an object"),
    "role": (_module(0, role="embedding"), r"'role' is \"embedding\"; allowed: 'input' or 'output'"),
    "dtype": (_module(0, factor_dtype="int3"), r"'factor_dtype' is \"int3\"; allowed: float32"),
    "padding": (_module(0, padding_idx=96), r"'padding_idx' is 96; allowed: null or an index below 96"),
    "tied_to": (_module(1, tied_to="nowhere"), r"'tied_to' is \"nowhere\"; allowed: one of \['model.embed_tokens'\]"),
    "aliases": (_module(0, aliases="x"), r"'aliases' is \"x\"; allowed: a list of a string"),
    "unknown field": (_module(0, colour="red"), r"unknown field\(s\) \['colour'\] in ModuleSpec"),
    "missing field": (lambda s: s["modules"][0].pop("rank"), r"modules\[0\] lacks field\(s\) rank"),
    "method": (_module(0, method="zip"), r"module 'model.embed_tokens': unknown method 'zip'"),
    "format_version": (lambda s: s.update(format_version="2"), r"'format_version' is \"2\"; allowed: an integer"),
    "seed": (lambda s: s.update(seed="x"), r"'seed' is \"x\"; allowed: an integer or null"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_sections_are_one_line(section: dict[str, Any], case: str) -> None:
    edit, needle = CRAFTED[case]
    crafted = copy.deepcopy(section)
    edit(crafted)
    with pytest.raises(CheckpointError, match=needle) as caught:
        parse_config(crafted)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("value", ["abc", 3, ["x"], None])
def test_a_section_that_is_not_an_object_is_one_line(section: dict[str, Any], value: Any, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": value}))
    if value is None:
        with pytest.raises(CheckpointError, match="is not an embcompress checkpoint"):
            read_compression_config(tmp_path)
        return
    with pytest.raises(CheckpointError, match=r"invalid quantization_config in .* is a \w+, not an object"):
        read_compression_config(tmp_path)


def test_a_valid_section_round_trips(section: dict[str, Any]) -> None:
    config = parse_config(section)
    assert config.to_dict() == {k: v for k, v in section.items() if k != "quant_method"}


def test_unbuildable_modules_are_one_line(section: dict[str, Any]) -> None:
    crafted = copy.deepcopy(section)
    crafted["modules"][0].update(method="transform", options={})
    needle = r"config.json: transform spec .* has no 'groups'.*\(re-create the checkpoint"
    with pytest.raises(CheckpointError, match=needle):
        parse_config(crafted)


def test_corrupt_weights_header_is_one_line(section: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": section}))
    (tmp_path / "model.safetensors").write_bytes(b"\x10" * 32)
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        check_checkpoint(tmp_path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing factor tensor\(s\): lm_head.source.basis"):
        check_checkpoint(tmp_path)
