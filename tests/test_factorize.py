"""Planning (validation before any change), fitting and accounting of factorize_model."""

from __future__ import annotations

import pytest
import torch

from embcompress.errors import BudgetError, EmbcompressError
from embcompress.factorize import FactorizeOptions, factorize_model, plan
from embcompress.frequency import FrequencyOptions
from embcompress.modules import FactorizedEmbedding, FactorizedLinear
from embcompress.spectral import break_even_rank
from helpers.models import HIDDEN, VOCAB, forward_logits, make_tiny

BREAK_EVEN = VOCAB * HIDDEN // (VOCAB + HIDDEN)  # 13 for 96 x 16; capped by min(rows, cols) = 16


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_break_even_rank() -> None:
    assert break_even_rank(96, 16, 96 + 16) == BREAK_EVEN == 13
    assert break_even_rank(30522, 384, 30522 + 384) == 379
    assert break_even_rank(49152, 576, 49152 + 576) == 569
    r = break_even_rank(1000, 100, 1100)
    assert r * 1100 < 1000 * 100 <= (r + 1) * 1100


def test_rank_above_break_even_refused_before_touching_model() -> None:
    model = make_tiny("llama-tied")
    before = state_snapshot(model)
    rank = BREAK_EVEN + 1
    with pytest.raises(BudgetError, match=rf"rank {rank} .* between 1 and {BREAK_EVEN}.*break-even rank {BREAK_EVEN}"):
        factorize_model(model, FactorizeOptions(rank=rank))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding


@pytest.mark.parametrize(("field", "value"), [("rank", 0), ("rank", -3), ("rank_input", 0), ("rank_output", -1)])
def test_non_positive_rank_refused_at_construction(field: str, value: int) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(EmbcompressError, match=rf"^{flag} must be a positive integer, got {value}$"):
        FactorizeOptions(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"energy": 1.5}, r"--energy must be in \(0, 1\]"),
        ({"ratio": 0.5}, "--ratio must be greater than 1"),
        ({"rank": 4, "energy": 0.5}, "give only one of --rank, --energy, --ratio"),
        ({"rank": 4, "targets": ("middle",)}, r"unknown target.*middle.*valid: input, output"),
        ({"rank": 4, "factor_dtype": "int3"}, "unknown factor dtype 'int3'"),
        ({"method": "nope"}, r"unknown method 'nope'; valid methods: .*svd"),
        ({"method": "nmf", "method_options": {"max_iter": 0}}, "nmf option max_iter must be at least 1"),
        ({"method_options": {"iters": 3}}, r"method 'svd' does not take option\(s\) iters; allowed: solver"),
    ],
)
def test_bad_factorize_options_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(EmbcompressError, match=message):
        FactorizeOptions(**kwargs)


def test_factorize_options_round_trip_and_strict_from_dict() -> None:
    options = FactorizeOptions(method="nmf", rank=4, targets=["input"], method_options={"max_iter": 7})
    assert options.targets == ("input",)
    assert FactorizeOptions.from_dict(options.to_dict()) == options
    assert options.method_config.max_iter == 7
    with pytest.raises(EmbcompressError, match=r"unknown FactorizeOptions field\(s\) rnak; allowed: method, rank"):
        FactorizeOptions.from_dict({"rnak": 4})


def test_break_even_rank_itself_accepted() -> None:
    result = factorize_model(make_tiny("llama-tied"), FactorizeOptions(rank=BREAK_EVEN))
    assert result.modules[0].params_after < result.modules[0].params_before


def test_missing_rank_and_unknown_names() -> None:
    model = make_tiny("llama-tied")
    with pytest.raises(BudgetError, match="no rank given"):
        plan(model, FactorizeOptions())
    with pytest.raises(EmbcompressError, match=r"unknown method 'nope'; valid methods: .*svd"):
        plan(model, FactorizeOptions(method="nope", rank=4))
    with pytest.raises(EmbcompressError, match=r"unknown target.*middle.*valid: input, output"):
        plan(model, FactorizeOptions(rank=4, targets=("middle",)))
    with pytest.raises(EmbcompressError, match="unknown factor dtype 'int3'"):
        plan(model, FactorizeOptions(rank=4, factor_dtype="int3"))
    with pytest.raises(EmbcompressError, match="does not take option"):
        plan(model, FactorizeOptions(rank=4, method_options={"iters": 3}))


def test_output_target_without_head_refused() -> None:
    with pytest.raises(EmbcompressError, match="no output embedding"):
        plan(make_tiny("bert-encoder"), FactorizeOptions(rank=4, targets=("output",)))


def test_per_role_ranks_on_untied_model() -> None:
    result = factorize_model(make_tiny("llama-untied"), FactorizeOptions(rank_input=3, rank_output=5))
    assert [(m.role, m.rank) for m in result.modules] == [("input", 3), ("output", 5)]


def test_svd_is_the_best_rank_r_approximation() -> None:
    model = make_tiny("llama-untied")
    weight = model.get_input_embeddings().weight.detach().clone()
    result = factorize_model(model, FactorizeOptions(rank=4, targets=("input",)))
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close(model.get_input_embeddings().dense().double(), best, rtol=1e-4, atol=1e-4)
    expected_err = float(s[4:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())
    assert result.modules[0].relative_error == pytest.approx(expected_err, rel=1e-4)


def test_accounting_tied() -> None:
    model = make_tiny("llama-tied")
    total_before = sum(p.numel() for p in model.parameters())
    result = factorize_model(model, FactorizeOptions(rank=4))
    inp, out = result.modules
    assert (inp.params_before, inp.params_after) == (VOCAB * HIDDEN, 4 * (VOCAB + HIDDEN))
    assert (inp.bytes_before, inp.bytes_after) == (4 * VOCAB * HIDDEN, 16 * (VOCAB + HIDDEN))
    assert out.tied_to == "model.embed_tokens" and (out.params_after, out.bytes_after) == (0, 0)
    assert result.params_before == total_before
    assert result.params_after == total_before - VOCAB * HIDDEN + 4 * (VOCAB + HIDDEN)
    assert result.params_after == sum(p.numel() for p in model.parameters())
    assert isinstance(model.lm_head, FactorizedLinear) and model.lm_head.source is model.model.embed_tokens


def test_output_only_on_tied_model_keeps_input_dense(tiny_ids: torch.Tensor) -> None:
    model = make_tiny("llama-tied")
    weight = model.get_input_embeddings().weight.detach().clone()
    reference = make_tiny("llama-tied")
    result = factorize_model(model, FactorizeOptions(rank=4, targets=("output",)))
    assert [m.tied_to for m in result.config.modules] == [None]
    assert torch.equal(model.get_input_embeddings().weight, weight)
    assert isinstance(model.lm_head.source, FactorizedEmbedding)
    # hidden states are unchanged; only the head is approximated
    with torch.no_grad():
        h_ref = reference.model(tiny_ids).last_hidden_state
        h_new = model.model(tiny_ids).last_hidden_state
    torch.testing.assert_close(h_new, h_ref)
    torch.testing.assert_close(forward_logits(model, tiny_ids), model.lm_head(h_new))


def test_frequency_options_validate_at_construction() -> None:
    with pytest.raises(EmbcompressError, match="--freq-exponent must be between 0 and 4, got 5"):
        FrequencyOptions("corpus.txt", exponent=5)
    with pytest.raises(EmbcompressError, match="--freq-floor must be >= 0, got -1"):
        FrequencyOptions("corpus.txt", floor=-1)
    options = FrequencyOptions("corpus.txt", exponent=1.0, max_tokens=100)
    assert FrequencyOptions.from_dict(options.to_dict()) == options
