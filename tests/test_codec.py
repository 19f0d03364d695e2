"""Fast tests of embcompress.codec on small random matrices."""

from __future__ import annotations

import pytest
import torch

from embcompress import codec


def _matrix(rows: int = 600, cols: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.linspace(3.0, 0.1, cols)
    return torch.randn(rows, cols, generator=g) * spectrum + 0.5


def _outliers(rows: int = 512, cols: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, cols, generator=g)
    x[:, 7] *= 25.0  # one outlier dimension: per-row absmax scales waste their range on it
    return x


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [1, 3, 7, 8, 13, 64, 101])
def test_pack_round_trip(bits: int, n: int) -> None:
    values = torch.randint(0, 2**bits, (5, n), generator=torch.Generator().manual_seed(n))
    packed = codec.pack_bits(values, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, codec.packed_nbytes(n, bits))
    assert torch.equal(codec.unpack_bits(packed, bits, n), values)


def test_pack_rejects_bad_width() -> None:
    with pytest.raises(ValueError):
        codec.pack_bits(torch.zeros(3, dtype=torch.int64), 9)


def test_reference_byte_counts() -> None:
    e = _matrix(rows=10, cols=64)
    assert codec.quantize_per_row(e, 8)[1] == 10 * (64 + 4)
    assert codec.quantize_per_row(e, 4)[1] == 10 * (32 + 4)
    assert codec.quantize_q8_0(e)[1] == 10 * 2 * 34
    assert codec.quantize_q4_0(e)[1] == 10 * 2 * 18
    assert codec.quantize_nf4(e)[1] == 10 * 1 * 34


def test_reference_errors() -> None:
    x = _outliers()
    int8 = _mse(codec.quantize_per_row(x, 8)[0], x)
    int4 = _mse(codec.quantize_per_row(x, 4)[0], x)
    assert int8 < 1e-3 * float(x.var())
    assert _mse(codec.quantize_q4_0(x)[0], x) < int4
    assert _mse(codec.quantize_nf4(x)[0], x) < int4
    assert _mse(codec.quantize_q8_0(x)[0], x) < _mse(codec.quantize_q4_0(x)[0], x)


def test_q4_0_levels() -> None:
    x = torch.linspace(-1.0, 0.5, 32)[None, :]
    out, _ = codec.quantize_q4_0(x)
    d = torch.tensor(1.0 / 8).half().float()  # max is -1 -> d = 1/8, levels (q - 8) * d in [-1, 7/8]
    assert torch.allclose(out, torch.round(x / d).clamp(-8, 7) * d, atol=1e-6)


def test_decode_rows_matches_full_decode() -> None:
    e = _matrix()
    code = codec.encode(e, bits_per_weight=3.0)
    full = codec.decode(code)
    ids = torch.tensor([[0, 5, 599], [17, 17, 3]])
    assert torch.allclose(codec.decode_rows(code, ids), full[ids], rtol=0, atol=1e-5)  # matmul blocking only


def test_error_decreases_with_bits() -> None:
    e = _matrix(rows=2000)
    errors = [_mse(codec.decode(codec.encode(e, bits_per_weight=b)), e) for b in (2.0, 3.0, 4.0, 6.0)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * float(e.var())


def test_budget_and_nbytes() -> None:
    e = _matrix(rows=2000)
    for bpw in (2.0, 4.0):
        code = codec.encode(e, bits_per_weight=bpw)
        stored = sum(t.numel() * t.element_size() for t in codec.to_tensors(code).values())
        assert codec.nbytes(code) == stored
        assert stored <= bpw * e.numel() / 8
        assert stored == codec.total_nbytes(2000, 64, [tuple(g) for g in code.layout.tolist()])


def test_metric_weighting_helps_in_its_metric() -> None:
    e = _matrix(rows=2000)
    metric = torch.diag(torch.logspace(2, -2, 64))
    plain = codec.decode(codec.encode(e, bits_per_weight=3.0)) - e
    weighted = codec.decode(codec.encode(e, bits_per_weight=3.0, metric=metric)) - e
    assert float(((weighted @ metric) * weighted).sum()) < float(((plain @ metric) * plain).sum())


def test_tensors_round_trip() -> None:
    code = codec.encode(_matrix(), bits_per_weight=3.0)
    tensors = codec.to_tensors(code)
    back = codec.from_tensors({k: v.clone() for k, v in tensors.items()})
    assert tensors.keys() == codec.to_tensors(back).keys()
    assert all(torch.equal(tensors[k], v) for k, v in codec.to_tensors(back).items())
    assert torch.equal(codec.decode(back), codec.decode(code))


@pytest.mark.parametrize("rotate", [True, False])
def test_basis_rows_are_unit_and_scales_carry_the_magnitudes(rotate: bool) -> None:
    # Distillation trains the float parts with absolute (Adam) steps: rows as small as a component's spread
    # diverged at the default learning rate, so the basis stays O(1) whatever the matrix's scale.
    e = _matrix(rows=2000) * 0.01
    code = codec.encode(e, bits_per_weight=3.0, metric=torch.diag(torch.logspace(1, -1, 64)), rotate=rotate)
    norms = code.basis.float().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=2e-3)
    assert _mse(codec.decode(code), e) < 0.1 * float(e.var(0).sum() / 64)
