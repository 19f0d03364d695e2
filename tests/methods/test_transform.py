"""The transform code as a module: stored bytes match the file, lookup and head agree with the codec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import embcompress
from embcompress.checkpoint import WEIGHTS_NAME, save_model_files
from embcompress.codec import decode, encode, nbytes
from embcompress.errors import BudgetError, EmbcompressError
from embcompress.factorize import FactorizeOptions, factorize_model
from embcompress.methods.transform import TransformCodedEmbedding
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
