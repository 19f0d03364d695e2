"""FactorizedEmbedding / FactorizedLinear against the dense products they replace."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from embcompress.config import ModuleSpec
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from embcompress.quant import GEMM_CHUNK, fast_kernels, int8_matmul_t, pad_int8, set_fast_kernels, use_fast_kernel

V, H, R = 12, 6, 3


def spec(**overrides: object) -> ModuleSpec:
    base: dict[str, object] = {"path": "emb", "role": "input", "method": "svd", "rank": R}
    return ModuleSpec(**{**base, "num_embeddings": V, "embedding_dim": H, **overrides})  # type: ignore[arg-type]


def factors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(V, R, generator=gen), torch.randn(R, H, generator=gen)


def test_lookup_equals_dense_rows() -> None:
    codes, basis = factors()
    module = FactorizedEmbedding.from_factors(spec(), codes, basis)
    ids = torch.tensor([[0, 5, 11], [3, 3, 7]])
    torch.testing.assert_close(module(ids), (codes @ basis)[ids])
    torch.testing.assert_close(module.dense(), codes @ basis)
    torch.testing.assert_close(module.dense_rows(4, 9), (codes @ basis)[4:9])
    assert (module.num_embeddings, module.embedding_dim, module.rank) == (V, H, R)


def test_project_equals_dense_head() -> None:
    codes, basis = factors()
    module = FactorizedEmbedding.from_factors(spec(), codes, basis)
    hidden = torch.randn(2, 4, H)
    torch.testing.assert_close(module.project(hidden), hidden @ (codes @ basis).T)


def test_offset_and_embed_scale() -> None:
    codes, basis = factors()
    offset = torch.randn(H)
    module = FactorizedEmbedding.from_factors(spec(offset=True, embed_scale=2.5), codes, basis, offset)
    ids = torch.arange(V)
    dense = codes @ basis - offset
    torch.testing.assert_close(module(ids), dense * 2.5)
    torch.testing.assert_close(module.dense(), dense)  # dense() excludes embed_scale
    hidden = torch.randn(5, H)
    torch.testing.assert_close(module.project(hidden), hidden @ dense.T, rtol=1e-5, atol=1e-5)


def test_padding_idx_gets_no_gradient() -> None:
    codes, basis = factors()
    module = FactorizedEmbedding.from_factors(spec(padding_idx=0), codes, basis)
    module(torch.tensor([0, 1, 2])).sum().backward()
    assert module.codes.grad is not None
    assert torch.count_nonzero(module.codes.grad[0]) == 0
    assert torch.count_nonzero(module.codes.grad[1]) > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_factor_storage_dtypes(dtype: str) -> None:
    codes, basis = factors()
    module = FactorizedEmbedding.from_factors(spec(factor_dtype=dtype), codes, basis)
    assert str(module.codes.dtype) == f"torch.{dtype}"
    assert module.factor("codes").dtype == torch.float32
    ids = torch.arange(V)
    torch.testing.assert_close(module(ids), module.factor("codes") @ module.factor("basis"))
    rel = (module.dense() - codes @ basis).norm() / (codes @ basis).norm()
    assert rel < 0.02
    if dtype == "int8":
        assert module.codes_scale.shape == (V, 1)
        assert not module.codes.requires_grad


def test_from_spec_shapes_and_device() -> None:
    module = FactorizedEmbedding.from_spec(spec(offset=True), device="meta")
    assert module.codes.shape == (V, R) and module.basis.shape == (R, H)
    assert module.codes.is_meta and module.offset is not None and module.offset.shape == (H,)


def test_linear_head_with_bias_and_shared_source() -> None:
    codes, basis = factors()
    source = FactorizedEmbedding.from_factors(spec(), codes, basis)
    bias = nn.Parameter(torch.randn(V))
    head = FactorizedLinear.from_source(source, bias)
    assert head.bias is bias  # an existing Parameter is shared, not copied
    assert head.source is source
    assert (head.in_features, head.out_features) == (H, V)
    hidden = torch.randn(3, H)
    torch.testing.assert_close(head(hidden), hidden @ (codes @ basis).T + bias)
    torch.testing.assert_close(head.dense(), codes @ basis)
    copied = FactorizedLinear.from_source(source, bias.detach())
    assert isinstance(copied.bias, nn.Parameter) and copied.bias is not bias


def test_linear_output_dtype_follows_hidden() -> None:
    codes, basis = factors()
    head = FactorizedLinear.from_source(FactorizedEmbedding.from_factors(spec(), codes, basis))
    assert head(torch.randn(2, H, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int8_matmul_kernels_match_the_dequantized_product(rows: int) -> None:
    """Both serving kernels (int8 GEMV for few rows, bfloat16 GEMM chunks for many) == x @ (q * s).T."""
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (GEMM_CHUNK + 77, 72), dtype=torch.int8)
    scale = torch.rand(q.shape[0], 1) + 0.5
    x = torch.randn(2, rows, 72)
    expected = x @ (q.float() * scale).T
    with torch.no_grad():
        got = int8_matmul_t(x, pad_int8(q), scale)
        with fast_kernels(False):
            exact = int8_matmul_t(x, q, scale)
    torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-3)
    assert got.shape == expected.shape and not torch.equal(got, exact)
    torch.testing.assert_close(got, expected, rtol=0, atol=float(8e-3 * expected.abs().max()))


def test_a_fast_kernels_block_is_local_to_its_thread_and_set_fast_kernels_is_global() -> None:
    x = torch.zeros(2, 3)
    seen: list[bool] = []
    with fast_kernels(False):
        assert not use_fast_kernel(x)
        worker = threading.Thread(target=lambda: seen.append(use_fast_kernel(x)))
        worker.start()
        worker.join()
    assert seen == [True] and use_fast_kernel(x)
    previous = set_fast_kernels(False)
    try:
        worker = threading.Thread(target=lambda: seen.append(use_fast_kernel(x)))
        worker.start()
        worker.join()
        with fast_kernels(True):
            assert use_fast_kernel(x)
        assert seen == [True, False] and not use_fast_kernel(x)
    finally:
        set_fast_kernels(previous)
