"""The ``compress`` recipe: layout arithmetic and choice, factor re-storage, and the whole pipeline
on tiny real models with a trained tokenizer and a text corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import embcompress
from embcompress.compress import (
    DENSE,
    CompressOptions,
    CompressResult,
    Layout,
    choose_layout,
    compress_checkpoint,
    compress_model,
    fixed_layout,
    largest_tail_rank,
    layout_bytes,
    prior_counts,
)
from embcompress.errors import BudgetError, EmbcompressError
from embcompress.factorize import FactorizeOptions, convert_factor_dtype, factorize_model
from embcompress.frequency import weights_from_counts
from embcompress.report import REPORT_NAME
from embcompress.sizes import module_bytes
from helpers.distill import KINDS, make_teacher, make_tokenizer, write_corpus
from helpers.models import forward_logits, make_tiny

FAST = {"steps": 4, "batch_size": 2, "seq_len": 16, "eval_every": 2, "eval_windows": 4}


def zipf_counts(rows: int) -> torch.Tensor:
    return 1000.0 / (torch.randperm(rows, generator=torch.Generator().manual_seed(0)).double() + 1)


@pytest.mark.parametrize(
    ("sizes", "ranks"), [([20, 76], [DENSE, 6]), ([96], [8]), ([10, 30, 56], [DENSE, 8, 3]), ([96], [DENSE])]
)
def test_layout_bytes_match_the_stored_grouped_int8_module(sizes: list[int], ranks: list[int | str]) -> None:
    model = make_tiny("llama-tied")
    cols = model.get_input_embeddings().weight.shape[1]
    layout = Layout(sizes, ranks, layout_bytes(cols, sizes, ranks))
    options = FactorizeOptions(method="grouped", rank=13, factor_dtype="int8", method_options=layout.method_options())
    if ranks == [DENSE]:
        options.rank = 13
        with pytest.raises(BudgetError):  # a fully dense layout is above the grouped break-even budget
            factorize_model(model, options, row_weights=weights_from_counts(zipf_counts(96)))
        return
    factorize_model(model, options, row_weights=weights_from_counts(zipf_counts(96)))
    assert module_bytes(model.get_input_embeddings())[1] == layout.nbytes


def test_choose_layout_fills_the_budget_and_keeps_frequent_rows_whole() -> None:
    torch.manual_seed(0)
    rows, cols = 4000, 32
    matrix = torch.randn(rows, cols)
    target = int(rows * cols * 4 / 6)
    layout = choose_layout(matrix, zipf_counts(rows), target)
    assert layout.nbytes <= target and sum(layout.sizes) == rows
    assert layout.dense > 0 and int(layout.ranks[-1]) >= 8
    assert layout.nbytes > 0.95 * target  # the greedy allocation spends the budget
    assert 0 <= layout.lost < 1  # type: ignore[operator]


def test_choose_layout_prefers_what_frequent_tokens_need() -> None:
    torch.manual_seed(0)
    rows, cols = 3000, 24
    matrix = torch.randn(rows, cols)
    counts = torch.zeros(rows, dtype=torch.float64)
    counts[:300] = 1000.0  # 300 tokens carry all the text
    layout = choose_layout(matrix, counts, int(rows * cols * 4 / 4))
    assert layout.ranks[0] == DENSE and layout.sizes[0] >= 300


def test_choose_layout_refuses_an_unreachable_ratio_with_the_largest_feasible_one() -> None:
    with pytest.raises(BudgetError, match=r"--ratio is too high for a 4000x32 embedding.*largest feasible ratio is"):
        choose_layout(torch.randn(4000, 32), zipf_counts(4000), target_bytes=10_000)


def test_fixed_layout_validates_the_rank() -> None:
    assert fixed_layout(100, 16, 500, 0).ranks == [DENSE]
    assert fixed_layout(100, 16, 10, 4).sizes == [10, 90]
    assert largest_tail_rank(100, 16, 10, layout_bytes(16, [10, 90], [DENSE, 4])) == 4
    with pytest.raises(EmbcompressError, match="--tail-rank must be between 1 and 16, got 40"):
        fixed_layout(100, 16, 10, 40)


def test_prior_counts_decrease_with_the_token_id() -> None:
    prior = prior_counts(50)
    assert bool((prior[1:] < prior[:-1]).all())


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"ratio": 1.0}, "--ratio must be above 1"),
        ({"max_minutes": 0}, "--max-minutes must be positive"),
        ({"heldout_fraction": 1.5}, "--heldout-fraction must be in (0, 1)"),
        ({"dense_rows": -1}, "--dense-rows must be >= 0"),
        ({"tail_rank": 8}, "--tail-rank fixes a --domain layout; add --domain or drop it"),
        ({"data": "/no/such/corpus"}, "/no/such/corpus"),
    ],
)
def test_bad_options_are_refused_before_loading(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(EmbcompressError) as err:
        CompressOptions(**fields).check()
    assert needle in str(err.value)


def test_options_from_dict_is_strict_and_round_trips() -> None:
    options = CompressOptions(ratio=11.0, seed=3)
    assert CompressOptions.from_dict(options.to_dict()) == options
    with pytest.raises(EmbcompressError, match=r"unknown CompressOptions field.*ratoi.*allowed: ratio"):
        CompressOptions.from_dict({"ratoi": 8})


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-encoder"])
def test_convert_factor_dtype_keeps_outputs_and_survives_save_reload(name: str, tmp_path: Path) -> None:
    model = make_tiny(name)
    rows = model.get_input_embeddings().weight.shape[0]
    options = FactorizeOptions(method="grouped", rank=8, method_options={"buckets": [20, "rest"]})
    factorize_model(model, options, row_weights=weights_from_counts(zipf_counts(rows)))
    ids = torch.randint(3, rows, (2, 9), generator=torch.Generator().manual_seed(1))
    before = forward_logits(model, ids)
    source = model.get_input_embeddings()
    convert_factor_dtype(model, "int8")
    assert all(p.dtype == torch.float32 for n, p in source.named_parameters() if n != "perm")
    stored = {p.dtype for n, p in model.get_input_embeddings().named_parameters() if not n.endswith("_scale")}
    assert torch.int8 in stored
    after = forward_logits(model, ids)
    assert torch.allclose(before, after, atol=0.05 * float(before.abs().max()))
    model.save_pretrained(tmp_path / "m")
    assert torch.equal(forward_logits(embcompress.load(tmp_path / "m"), ids), after)


def _teacher_dir(root: Path, name: str) -> Path:
    folder = root / "teacher"
    make_teacher(name).save_pretrained(folder)
    make_tokenizer(KINDS[name]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("name", "distill"), [("llama-tied", True), ("bert-encoder", True), ("llama-untied", False)])
def test_compress_writes_an_int8_checkpoint_with_its_report(tmp_path: Path, name: str, distill: bool) -> None:
    torch.set_num_threads(1)
    teacher = _teacher_dir(tmp_path, name)
    corpus = write_corpus(tmp_path / "corpus.txt", 200)
    options = CompressOptions(ratio=2.0, domain=True, data=str(corpus), distill=distill, distill_overrides=FAST)
    result = compress_checkpoint(str(teacher), tmp_path / "out", options)
    out = tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out", "teacher"]  # no work folder left
    assert (out / REPORT_NAME).is_file() and (out / "embcompress.json").is_file()
    assert ("distill_log.jsonl" in {p.name for p in out.iterdir()}) == distill
    model = embcompress.load(out)
    assert any(p.dtype == torch.int8 for p in model.get_input_embeddings().parameters())
    size = result.report["size"]["embedding"]
    assert size["bytes_after"] <= size["bytes_before"] / 2
    assert result.report["behaviour"] is not None and {r["name"] for r in result.report["references"]} == {
        "int8",
        "q8_0",
        "q4_0",
        "nf4",
        "int4",
    }
    assert sum(result.summary["recipe"]["buckets"]["sizes"]) == model.get_input_embeddings().num_embeddings
    assert result.mode == "domain" and "(tokens by frequency)" in result.layout
    assert ("distill" in result.summary) == distill
    card = (out / "README.md").read_text()
    assert "## Quality (measured by `embcompress compress`)" in card and "| int4 |" in card


def test_compress_without_data_uses_the_vocabulary_prior(tmp_path: Path) -> None:
    teacher = _teacher_dir(tmp_path, "llama-tied")
    options = CompressOptions(ratio=2.0, domain=True, distill=False)
    result = compress_checkpoint(str(teacher), tmp_path / "out", options)
    assert result.frequency_source.startswith("vocabulary order")
    assert result.report["behaviour"] is None and embcompress.load(tmp_path / "out") is not None


def test_compress_refuses_an_existing_output_before_loading(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(EmbcompressError, match="already exists"):
        compress_checkpoint("no-such-model-anywhere", tmp_path / "out", CompressOptions())
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_compress_can_skip_the_report(tmp_path: Path) -> None:
    teacher = _teacher_dir(tmp_path, "llama-tied")
    corpus = write_corpus(tmp_path / "corpus.txt", 100)
    options = CompressOptions(ratio=4.0, data=str(corpus), report=False)
    result = compress_checkpoint(str(teacher), tmp_path / "out", options)
    assert result.report is None and not (tmp_path / "out" / REPORT_NAME).exists()
    assert "## Quality" not in (tmp_path / "out" / "README.md").read_text()


def _dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.get_input_embeddings().parameters()}


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied"])
def test_default_mode_is_the_transform_code_with_an_out_of_domain_column(tmp_path: Path, name: str) -> None:
    torch.set_num_threads(1)
    teacher = _teacher_dir(tmp_path, name)
    corpus = write_corpus(tmp_path / "corpus.txt", 150)
    ood = write_corpus(tmp_path / "other.txt", 60, seed=7)
    options = CompressOptions(ratio=2.0, data=str(corpus), ood_data=str(ood))
    result = compress_checkpoint(str(teacher), tmp_path / "out", options)
    out = tmp_path / "out"
    assert result.mode == "robust" and result.layout.startswith("transform code:") and result.frequency_source is None
    assert "distill" not in result.summary and not (out / "distill_log.jsonl").exists()
    loaded = embcompress.load(out)
    assert _dtypes(loaded) == {torch.uint8, torch.float16}
    assert result.embedding_bytes == result.report["size"]["embedding"]["bytes_after"]
    assert result.embedding_bytes <= 96 * 16 * 4 / 2 * (1 if name == "llama-tied" else 2)
    ood_report = result.ood_report
    assert ood_report is not None and ood_report["source"] == str(ood) and ood_report["behaviour"] is not None
    assert [r["name"] for r in ood_report["references"]] == ["int8", "q8_0", "q4_0", "nf4", "int4"]
    assert (out / "embcompress_report_ood.json").is_file()
    card = (out / "README.md").read_text()
    assert f"Out of domain: {ood}" in card and "| q4_0 |" in card and "domain mode" not in card
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.equal(forward_logits(plain, ids), forward_logits(loaded, ids))


def test_without_ood_data_a_causal_lm_is_checked_on_text_it_samples_itself(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folder = tmp_path / "teacher"
    make_tiny("llama-tied").save_pretrained(folder)
    make_tokenizer("causal").save_pretrained(folder)
    corpus = write_corpus(tmp_path / "corpus.txt", 100)
    result = compress_checkpoint(str(folder), tmp_path / "out", CompressOptions(ratio=2.0, data=str(corpus)))
    assert result.ood_report is not None and "sampled from" in result.ood_report["source"]
    assert result.ood_report["data"]["eval"]["tokens"] > 0


def test_transform_code_can_be_distilled_and_is_stored_half_precision(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    teacher = _teacher_dir(tmp_path, "llama-tied")
    corpus = write_corpus(tmp_path / "corpus.txt", 150)
    options = CompressOptions(ratio=2.0, data=str(corpus), distill=True, distill_overrides=FAST)
    result = compress_checkpoint(str(teacher), tmp_path / "out", options)
    assert result.summary["distill"]["steps"] > 0 and (tmp_path / "out" / "distill_log.jsonl").is_file()
    assert _dtypes(embcompress.load(tmp_path / "out")) == {torch.uint8, torch.float16}


def test_an_encoder_gets_no_out_of_domain_column_without_ood_data(tmp_path: Path) -> None:
    teacher = _teacher_dir(tmp_path, "bert-encoder")
    corpus = write_corpus(tmp_path / "corpus.txt", 80)
    result = compress_model_dir(teacher, corpus)
    assert result.ood_report is None and result.report["behaviour"] is not None


def compress_model_dir(folder: Path, corpus: Path) -> CompressResult:
    """The in-memory API on a loaded folder: the model is compressed in place, nothing is written."""
    model = transformers.AutoModel.from_pretrained(str(folder))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    result = embcompress.compress_model(model, tokenizer, CompressOptions(ratio=2.0, data=str(corpus)))
    assert isinstance(model.get_input_embeddings(), embcompress.CompressedEmbedding) and result.output is None
    return result


def test_the_same_seed_writes_the_same_bytes_whatever_the_thread_count(tmp_path: Path) -> None:
    teacher = _teacher_dir(tmp_path, "llama-tied")
    digests = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = tmp_path / f"out{threads}"
            compress_checkpoint(str(teacher), out, CompressOptions(ratio=2.0, seed=3, report=False))
        finally:
            torch.set_num_threads(previous)
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert torch.get_num_threads() == previous  # the calibration's single thread is given back


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "bert-encoder"])
def test_the_written_checkpoint_reloads_to_the_in_memory_student(tmp_path: Path, name: str) -> None:
    teacher = _teacher_dir(tmp_path, name)
    model = transformers.AutoModel.from_pretrained(teacher) if name == "bert-encoder" else None
    model = model or transformers.AutoModelForCausalLM.from_pretrained(teacher)
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher)
    compress_model(model, tokenizer, CompressOptions(ratio=2.0, report=False))
    model.save_pretrained(tmp_path / "out")
    auto = transformers.AutoModel if name == "bert-encoder" else transformers.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "out")
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(forward_logits(model.eval(), ids), forward_logits(reloaded, ids))
