"""The transform code as a module: stored bytes match the file, lookup and head agree with the codec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import embcompress
from embcompress.checkpoint import WEIGHTS_NAME, save_model_files
from embcompress.codec import decode, decode_head, encode, head_rows_for, nbytes, quantize_head
from embcompress.errors import BudgetError, EmbcompressError
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.methods.transform import TransformCodedEmbedding, split_rows
from embcompress.quant import fast_kernels
from helpers.models import forward_logits, make_tiny


def _transform(name: str, ratio: float = 3.0, **kw: object) -> torch.nn.Module:
    model = make_tiny(name)
    factorize_model(model, FactorizeOptions(method="transform", ratio=ratio, **kw))  # type: ignore[arg-type]
    return model


DTYPE_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8}


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-mlm"])
def test_stored_bytes_are_the_bytes_in_the_file(name: str, tmp_path: Path) -> None:
    model = make_tiny(name)
    result = factorize_model(model, FactorizeOptions(method="transform", ratio=3.0))
    save_model_files(model, tmp_path)
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as handle:
        slices = {k: handle.get_slice(k) for k in handle.keys()}  # noqa: SIM118
    for stats in (m for m in result.modules if m.tied_to is None):
        prefix = stats.path if stats.role == "input" else f"{stats.path}.source"
        in_file = sum(
            math.prod(s.get_shape()) * DTYPE_BYTES[s.get_dtype()]
            for k, s in slices.items()
            if k.startswith(prefix + ".") and not k.endswith(".weight")  # the empty load guard is not stored data
        )
        assert in_file == stats.bytes_after and stats.bytes_after <= stats.bytes_before / 3
    on_disk = {k: v for k, v in embcompress.load(tmp_path).state_dict().items() if ".codes_" in k}
    assert on_disk and all(v.dtype == torch.uint8 for v in on_disk.values())


def test_module_bytes_equal_the_codec_bytes_and_rows_equal_its_decode() -> None:
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(200, 32, generator=gen) @ torch.diag(torch.linspace(3, 0.1, 32))
    code = encode(matrix, bits_per_weight=5.0)
    spec = embcompress.ModuleSpec(
        path="emb", role="input", method="transform", rank=int(code.basis.shape[0]), num_embeddings=200,
        embedding_dim=32, factor_dtype="float16", options={"groups": code.layout.tolist()},
    )  # fmt: skip
    module = TransformCodedEmbedding.from_code(spec, code)
    stored = sum(p.numel() * p.element_size() for p in module.parameters())
    assert stored == nbytes(code) - code.layout.numel() * code.layout.element_size()  # the layout lives in config
    torch.testing.assert_close(module.dense(), decode(code), rtol=1e-5, atol=1e-5)
    hidden = torch.randn(3, 32, generator=gen)
    torch.testing.assert_close(module.project(hidden), hidden @ decode(code).T, rtol=1e-4, atol=1e-4)


def test_int8_serving_table_holds_every_coded_value_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("embcompress.methods.transform.TABLE_CHUNK", 7)  # several chunks and a ragged last one
    emb = _transform("llama-tied").get_input_embeddings()
    table, steps = emb.int8_table()
    k = steps.shape[0]
    assert table.dtype == torch.int8 and table.shape[1] % 32 == 0 and not table[:, k:].any()
    with torch.no_grad():
        levels = emb._levels(torch.arange(emb.num_embeddings))
    assert torch.equal(table[:, :k].float() * steps, levels)
    assert emb.int8_table()[0] is table  # cached until a code or codebook changes
    with torch.no_grad():
        emb.codebook_0.mul_(0.5)
    assert emb.int8_table()[0] is not table


def test_float32_storage_trains_and_half_storage_matches(tiny_ids: torch.Tensor) -> None:
    model = _transform("llama-tied", factor_dtype="float32")
    emb = model.get_input_embeddings()
    assert {p.dtype for p in emb.parameters() if p.requires_grad} == {torch.float32}
    emb.rows(torch.tensor([1, 5])).sum().backward()
    assert emb.basis.grad is not None and emb.row_scale.grad is not None
    half = emb.with_factor_dtype("float16")
    assert {p.dtype for p in half.parameters()} == {torch.uint8, torch.float16}
    torch.testing.assert_close(half.dense(), emb.dense(), rtol=2e-3, atol=2e-3)
    assert forward_logits(model, tiny_ids).isfinite().all()


def test_budgets_are_bytes_and_bad_ones_are_refused() -> None:
    with pytest.raises(BudgetError, match="takes a byte budget: pass --ratio"):
        FactorizeOptions(method="transform", rank=4)
    with pytest.raises(BudgetError, match="needs a byte budget"):
        factorize_model(make_tiny("llama-tied"), FactorizeOptions(method="transform"))
    with pytest.raises(BudgetError, match="leaves no bits for the codes"):
        _transform("llama-tied", ratio=60)
    untouched = make_tiny("llama-tied")
    with pytest.raises(EmbcompressError, match="factor dtype 'int8' is not allowed"):
        factorize_model(untouched, FactorizeOptions(method="transform", ratio=2.0, factor_dtype="int8"))
    assert isinstance(untouched.get_input_embeddings(), torch.nn.Embedding)  # refused before any change
    model = _transform("llama-tied", ratio=2.0, method_options={"bits_per_weight": 9.0})
    assert model.get_input_embeddings().spec.options["target_bytes"] == 96 * 16 * 9 // 8


# ------------------------------------------------------------------------------------------------ head rows


def _with_head(name: str, head_rows: int, priority: torch.Tensor | None = None) -> torch.nn.Module:
    model = make_tiny(name)
    options = FactorizeOptions(method="transform", ratio=2.0, method_options={"head_rows": head_rows})
    factorize_model(model, options, priority=priority)
    return model


def test_head_rows_are_the_priority_rows_at_int8_and_the_rest_is_the_code() -> None:
    model = make_tiny("llama-untied")
    original = model.get_input_embeddings().weight.detach().clone()
    priority = torch.randperm(original.shape[0], generator=torch.Generator().manual_seed(0))
    factorize_model(
        model, FactorizeOptions(method="transform", ratio=2.0, method_options={"head_rows": 20}), priority=priority
    )
    emb = model.get_input_embeddings()
    assert isinstance(emb, TransformCodedEmbedding) and emb.head_rows == 20 and emb.spec.options["head_rows"] == 20
    assert torch.equal(emb.head_ids.long(), priority[:20].sort().values)
    expected = quantize_head(original, priority[:20])
    assert torch.equal(emb.head_values, expected.values) and torch.equal(emb.head_scale, expected.scale)
    ids = torch.arange(original.shape[0])
    rows = emb(ids)
    assert torch.equal(rows[expected.ids.long()], decode_head(expected))
    assert emb.row_scale.shape[0] == original.shape[0] - 20
    # The lookup and the head (the transpose product) agree on every row, through either kernel.
    hidden = torch.randn(3, original.shape[1])
    for fast in (False, True):
        with fast_kernels(fast):
            assert torch.allclose(emb.project(hidden), hidden @ emb(ids).T, atol=1e-4)


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "gpt2", "bert-mlm"])
def test_head_rows_survive_save_and_reload_with_identical_logits(name: str, tmp_path: Path) -> None:
    model = _with_head(name, 8)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path)
    loaded = embcompress.load(tmp_path)
    assert loaded.get_input_embeddings().head_rows == 8
    assert torch.equal(forward_logits(model, ids), forward_logits(loaded, ids))


def test_checkpoints_written_before_head_rows_load_unchanged(tmp_path: Path) -> None:
    model = _with_head("llama-tied", 0)
    assert "head_rows" in model.get_input_embeddings().spec.options
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for spec in config["quantization_config"]["modules"]:  # as an older release wrote it
        spec["options"].pop("head_rows")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids = torch.arange(96)[None]
    loaded = embcompress.load(tmp_path)
    assert loaded.get_input_embeddings().head_rows == 0
    assert torch.equal(forward_logits(model, ids), forward_logits(loaded, ids))


def test_head_rows_are_sized_from_the_budget_and_bad_counts_are_refused() -> None:
    # SmolLM2's and Gemma-3's shapes at 8x (4 bits per entry): thousands of rows; a starved budget: none.
    assert head_rows_for(49152, 576, 49152 * 576 // 2) == 2048
    assert 4096 < head_rows_for(262144, 640, 262144 * 640 // 2) < 16384
    assert head_rows_for(49152, 576, 49152 * 576 // 16) < head_rows_for(49152, 576, 49152 * 576 // 2)
    assert head_rows_for(96, 16, 96 * 16 // 8) == 0
    with pytest.raises(EmbcompressError, match="head_rows must be below the vocabulary"):
        _with_head("llama-tied", 96)
    with pytest.raises(EmbcompressError, match="head_rows must be -1"):
        FactorizeOptions(method="transform", ratio=2.0, method_options={"head_rows": -2}).validate()
    with pytest.raises(EmbcompressError, match="every id below 96 once"):
        _with_head("llama-tied", 8, priority=torch.zeros(96, dtype=torch.long))


def test_split_rows_takes_the_first_priority_ids() -> None:
    head, bulk = split_rows(6, 2, torch.tensor([4, 1, 0, 2, 3, 5]))
    assert head.tolist() == [1, 4] and bulk.tolist() == [0, 2, 3, 5]
    head, bulk = split_rows(4, 0, None)
    assert head.numel() == 0 and bulk.tolist() == [0, 1, 2, 3]
