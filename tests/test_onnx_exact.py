"""The transform code's ONNX graph decodes exactly what PyTorch decodes, for every bit width 1..8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from embcompress.codec import pack_bits, unpack_bits
from embcompress.config import ModuleSpec
from embcompress.methods import transform
from embcompress.methods.transform import TransformCodedEmbedding
from embcompress.onnx_export import OPSET, onnx_session

pytest.importorskip("onnxruntime")

VOCAB, HIDDEN = 3000, 64
#: Every bit width, each in two 8-value words, and a 7-bit group of 24 components (3 words per row).
GROUPS = [(16, bits) for bits in range(1, 9)] + [(24, 7)]


def every_width_module(head_rows: int, seed: int = 0) -> TransformCodedEmbedding:
    """A transform-coded table with a group of every bit width, random codes over the full range of each."""
    gen = torch.Generator().manual_seed(seed)
    spec = ModuleSpec(
        path="embed", role="input", method="transform", rank=sum(n for n, _ in GROUPS),
        num_embeddings=VOCAB, embedding_dim=HIDDEN, factor_dtype="float16",
        options={"groups": [list(g) for g in GROUPS], "head_rows": head_rows},
    )  # fmt: skip
    module = TransformCodedEmbedding(spec)
    rows = VOCAB - head_rows
    with torch.no_grad():
        for name in ("mean", "basis", "comp_scale", "row_scale"):
            param = module.get_parameter(name)
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1 + (0.5 if "scale" in name else 0))
        for g, (n, bits) in enumerate(GROUPS):
            codes = torch.randint(0, 2**bits, (rows, n), generator=gen)
            codes[0], codes[1] = 0, 2**bits - 1  # the extremes of every width
            module.get_parameter(f"codes_{g}").copy_(pack_bits(codes, bits))
            module.get_parameter(f"codebook_{g}").copy_(torch.randn(2**bits, generator=gen).sort().values)
        if head_rows:
            module.head_ids.copy_(torch.randperm(VOCAB, generator=gen)[:head_rows].sort().values.int())
            module.head_values.copy_(torch.randint(-127, 128, (head_rows, HIDDEN), generator=gen).to(torch.int8))
            module.head_scale.copy_(torch.rand(head_rows, generator=gen) * 0.01)
    return module.eval()


class _Decoded(nn.Module):
    """ids -> (codebook values of the bulk rows, decoded rows of the token ids)."""

    def __init__(self, module: TransformCodedEmbedding) -> None:
        super().__init__()
        self.module = module

    def forward(self, bulk: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.module._levels(bulk), self.module(ids)


def onnx_decode(module: TransformCodedEmbedding, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Export ``module``'s decoding and run it in onnxruntime on every bulk row and every token id."""
    bulk, ids = torch.arange(module.bulk_rows), torch.arange(VOCAB)
    with torch.no_grad():
        torch.onnx.export(
            _Decoded(module), (bulk[:5], ids[:5]), str(path), dynamo=False, do_constant_folding=False,
            opset_version=OPSET, input_names=["bulk", "ids"], output_names=["levels", "rows"],
            dynamic_axes={"bulk": {0: "n"}, "ids": {0: "m"}},
        )  # fmt: skip
    levels, rows = onnx_session(path).run(None, {"bulk": bulk.numpy(), "ids": ids.numpy()})
    return levels, rows


def torch_decode(module: TransformCodedEmbedding) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        levels = module._levels(torch.arange(module.bulk_rows))
        rows = module.rows(torch.arange(VOCAB))
    return levels.numpy(), rows.numpy()


@pytest.mark.parametrize("head_rows", [0, 100])
def test_every_bit_width_decodes_exactly_in_onnxruntime(head_rows: int, tmp_path: Path) -> None:
    module = every_width_module(head_rows)
    levels, rows = onnx_decode(module, tmp_path / "decode.onnx")
    want_levels, want_rows = torch_decode(module)
    np.testing.assert_array_equal(levels, want_levels)  # every coded value of every width, bit for bit
    np.testing.assert_allclose(rows, want_rows, rtol=1e-6, atol=1e-6)  # float products in another order
    if head_rows:  # the head rows come back as stored, at their ids
        ids = module.head_ids.long().numpy()
        want = (module.head_values.float() * module.head_scale.float()[:, None]).detach().numpy()
        np.testing.assert_allclose(rows[ids], want, rtol=1e-6, atol=1e-7)


def test_int64_word_unpacking_was_inexact_in_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the graph unpacks in int32 windows: the 56-bit words of 7-bit codes lose bits in onnxruntime."""
    module = every_width_module(0)
    monkeypatch.setattr(transform, "unpack_bits_bytewise", unpack_bits)
    levels, _ = onnx_decode(module, tmp_path / "decode.onnx")
    want, _ = torch_decode(module)
    seven = sum(n for n, _ in GROUPS[:6])  # first component of the first 7-bit group
    assert (levels != want)[:, seven : seven + 16].any()
