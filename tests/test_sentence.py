"""Sentence-transformers pipelines: loaded as the model their Transformer module loads, every module kept
by compress / factorize / distill / export, and the sentence embedding they give measured by reports and
distillation -- checked against sentence-transformers itself on a tiny real pipeline."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from typer.testing import CliRunner

import embcompress
from embcompress.checkpoint import copy_aux_files
from embcompress.cli import app
from embcompress.compress import CompressOptions, compress_checkpoint
from embcompress.data import iter_documents
from embcompress.distill import losses
from embcompress.report import EvalOptions, ReportOptions, build_report
from embcompress.sentence import (
    POOLING_MODES,
    Pooling,
    describe,
    encode,
    load_pipeline,
    pipeline_of,
    sentence_embedding,
)
from embcompress.sources import LoadOptions, load_source
from helpers.distill import make_teacher, make_tokenizer, single_thread, write_corpus
from helpers.sentence import PROMPT, TEXTS, build_pipeline, st_modules

st = pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.usefixtures(single_thread.__name__)
MODULE_FILES = [
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "2_Dense/config.json",
    "2_Dense/model.safetensors",
    "3_Dense/config.json",
    "3_Dense/model.safetensors",
    "4_Normalize/config.json",
]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pipeline(tmp_path_factory.mktemp("st"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("text") / "corpus.txt", 60)


@pytest.fixture(scope="module")
def compressed(pipeline_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compressed") / "out"
    compress_checkpoint(str(pipeline_dir), out, CompressOptions(ratio=2.0, data=str(corpus)))
    return out


def st_encode(folder: Path, texts: list[str]) -> torch.Tensor:
    return torch.tensor(st.SentenceTransformer(str(folder), device="cpu").encode(texts))


def ours(folder: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return encode(embcompress.load(folder), tokenizer, texts)


def assert_modules_kept(folder: Path, source: Path) -> None:
    for name in MODULE_FILES:
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name


def weight_keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize(
    "modes", [*((m,) for m in POOLING_MODES), ("cls", "mean"), ("max", "mean_sqrt_len_tokens", "weightedmean")]
)
@pytest.mark.parametrize("include_prompt", [True, False])
@pytest.mark.parametrize("left_padding", [False, True])
def test_pooling_matches_sentence_transformers(
    modes: tuple[str, ...], include_prompt: bool, left_padding: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 5, generator=gen)
    lengths = torch.tensor([7, 4, 5])
    positions = torch.arange(7)[None, :]
    mask = (positions >= 7 - lengths[:, None]) if left_padding else (positions < lengths[:, None])
    features = {"token_embeddings": tokens, "attention_mask": mask.long(), "prompt_length": 2}
    reference = st_modules().Pooling(5, pooling_mode=modes, include_prompt=include_prompt)
    expected = reference(dict(features))["sentence_embedding"]
    got = Pooling(modes, include_prompt)(dict(features))["sentence_embedding"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_folder_loads_with_its_pipeline_and_encodes_as_sentence_transformers(pipeline_dir: Path) -> None:
    _, model, tokenizer = load_source(str(pipeline_dir), LoadOptions())
    pipeline = pipeline_of(model)
    assert type(model).__name__ == "BertModel" and pipeline is not None and pipeline.prompt == PROMPT
    text = describe(pipeline)
    assert "Pooling(cls+mean, prompt excluded) -> Dense(32->24, Tanh) -> Dense(24->8, Identity) -> Normalize" in text
    expected = st_encode(pipeline_dir, TEXTS)
    assert torch.allclose(encode(model, tokenizer, TEXTS), expected, atol=1e-6)
    assert pipeline_of(copy.deepcopy(model)) is not None  # references and teachers are copies
    assert "embcompress_sentence_pipeline" not in str(list(model.state_dict()))


def test_compress_round_trips_through_sentence_transformers(compressed: Path, pipeline_dir: Path) -> None:
    assert_modules_kept(compressed, pipeline_dir)
    assert json.loads((compressed / "config.json").read_text())["architectures"] == ["BertModel"]
    loaded = st.SentenceTransformer(str(compressed), device="cpu")
    assert isinstance(loaded[0].auto_model.get_input_embeddings(), embcompress.CompressedEmbedding)
    assert next(loaded.parameters()).dtype == torch.float32  # it casts Dense to this dtype
    via_st, via_load = st_encode(compressed, TEXTS), ours(compressed, TEXTS)
    assert torch.allclose(via_st, via_load, atol=1e-6)
    cosine = (via_st * st_encode(pipeline_dir, TEXTS)).sum(-1)
    assert bool((cosine > 0.99).all()) and not torch.equal(via_st, st_encode(pipeline_dir, TEXTS))
    report = json.loads((compressed / "embcompress-report.json").read_text())
    assert "Dense(32->24, Tanh)" in report["data"]["sentence_embedding"]


def test_the_report_measures_the_pipelines_sentence_embedding(
    compressed: Path, pipeline_dir: Path, corpus: Path
) -> None:
    _, teacher, tokenizer = load_source(str(pipeline_dir), LoadOptions())
    options = ReportOptions(eval=EvalOptions(max_docs=40, seq_len=48), speed=False, references=("int4",))
    report = build_report(embcompress.load(compressed), teacher, tokenizer, corpus, options)
    docs = [d for d in iter_documents(corpus) if d.strip()][:40]
    expected = (st_encode(compressed, docs) * st_encode(pipeline_dir, docs)).sum(-1).double().mean()
    assert report["behaviour"]["documents"] == 40
    assert report["behaviour"]["pooled_cosine"] == pytest.approx(float(expected), abs=2e-6)
    assert report["references"][0]["behaviour"]["pooled_cosine"] < 1.0
    assert any(row[0] == "sentence embedding" for row in _provenance_rows(report))


def _provenance_rows(report: dict) -> list[list[str]]:
    from embcompress.report.tables import provenance_table

    return provenance_table(report).rows


def test_a_masked_lm_config_over_encoder_weights_is_written_as_the_encoder(
    tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_pipeline(tmp_path, architecture="BertForMaskedLM")
    with caplog.at_level(logging.WARNING, logger="embcompress"):
        result = compress_checkpoint(str(folder), tmp_path / "out", CompressOptions(ratio=2.0, report=False))
    assert any("names BertForMaskedLM; loaded as BertModel" in r.message for r in caplog.records)
    out = tmp_path / "out"
    assert [m["role"] for m in result.summary["modules"]] == ["input"]  # no head built, none compressed
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not any(key.startswith(("cls.", "bert.")) for key in weight_keys(out))
    assert_modules_kept(out, folder)
    assert torch.allclose(st_encode(out, TEXTS), ours(out, TEXTS), atol=1e-6)


def test_a_plain_folder_without_its_heads_weights_loads_as_the_bare_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "plain"
    encoder = make_teacher("bert-encoder")
    encoder.save_pretrained(folder)
    make_tokenizer("encoder").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with caplog.at_level(logging.WARNING, logger="embcompress"):
        _, model, _ = load_source(str(folder), LoadOptions())
    warnings = [r.message for r in caplog.records if "hold no head" in r.message]
    assert len(warnings) == 1 and "cls.predictions" in warnings[0] and "BertModel" in warnings[0]
    assert type(model).__name__ == "BertModel" and pipeline_of(model) is None
    weight = encoder.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, weight)


def test_factorize_distill_report_and_onnx_export_keep_the_pipeline(
    tmp_path: Path, pipeline_dir: Path, corpus: Path
) -> None:
    def run(*args: object) -> str:
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.stderr
        return result.stdout

    factorized, distilled, onnx = tmp_path / "f", tmp_path / "d", tmp_path / "x"
    run("factorize", pipeline_dir, "--rank", 4, "-o", factorized)
    fast = ["--steps", 2, "--batch-size", 2, "--seq-len", 16, "--eval-every", 1, "--eval-windows", 2]
    run("distill", factorized, "--teacher", pipeline_dir, "--data", corpus, "-o", distilled, *fast)
    for folder in (factorized, distilled):
        assert_modules_kept(folder, pipeline_dir)
        assert torch.allclose(st_encode(folder, TEXTS), ours(folder, TEXTS), atol=1e-6)
    report = json.loads(run("report", distilled, "--data", corpus, "--max-docs", 20, "--no-speed", "--format", "json"))
    assert report["data"]["sentence_embedding"].startswith("sentence-transformers: Pooling(cls+mean")
    pytest.importorskip("onnx")
    run("export", "--onnx", distilled, "-o", onnx)
    assert_modules_kept(onnx, pipeline_dir)
    assert (onnx / "onnx" / "model.onnx").is_file()


def test_the_distillation_loss_compares_pipeline_embeddings(pipeline_dir: Path) -> None:
    pipeline = load_pipeline(pipeline_dir)
    assert pipeline is not None
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 6, 16, generator=gen), torch.randn(4, 6, 16, generator=gen)
    mask = torch.ones(4, 6, dtype=torch.long)
    reference = st.SentenceTransformer(str(pipeline_dir), device="cpu")

    def st_head(hidden: torch.Tensor) -> torch.Tensor:
        features = {"token_embeddings": hidden, "attention_mask": mask}
        for module in list(reference)[1:]:
            features = module(features)
        return features["sentence_embedding"]

    expected = F.cosine_similarity(st_head(student), st_head(teacher), dim=-1)
    got = losses.pooled_cosine(student, teacher, mask, pipeline)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, losses.pooled_cosine(student, teacher, mask), atol=1e-3)
    assert torch.allclose(sentence_embedding(None, student, mask), student.mean(1))


def test_modules_it_cannot_evaluate_leave_the_plain_path_with_one_line(
    tmp_path: Path, pipeline_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    copy_aux_files(pipeline_dir, folder)
    (folder / "2_Dense" / "model.safetensors").rename(folder / "2_Dense" / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="embcompress"):
        assert load_pipeline(folder) is None
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules[:1], {**modules[1], "type": "x.LSTM"}]))
    with caplog.at_level(logging.WARNING, logger="embcompress"):
        assert load_pipeline(folder) is None
    lines = [r.message for r in caplog.records if "not evaluated" in r.message]
    assert len(lines) == 2 and "never unpickles" in lines[0] and "is a LSTM" in lines[1]


def test_copy_aux_files_copies_module_folders_with_their_weights_only(tmp_path: Path, pipeline_dir: Path) -> None:
    stray = tmp_path / "src"
    stray.mkdir()
    for item in pipeline_dir.iterdir():
        target = stray / item.name
        target.symlink_to(item, target_is_directory=item.is_dir())
    (stray / "checkpoint-1").mkdir()
    (stray / "checkpoint-1" / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    copy_aux_files(stray, out)
    assert (out / "2_Dense" / "model.safetensors").is_file() and not (out / "checkpoint-1").exists()
    assert not (out / "model.safetensors").exists()


def test_lower_casing_and_the_truncation_length_follow_the_transformer_module(
    tmp_path: Path, pipeline_dir: Path
) -> None:
    folder = tmp_path / "lower"
    shutil.copytree(pipeline_dir, folder)
    settings = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, "do_lower_case": True}))
    texts = ["The RED Cat sees A dog .", " ".join(["every dog"] * 40)]  # the second is longer than 48 tokens
    _, model, tokenizer = load_source(str(folder), LoadOptions())
    assert pipeline_of(model).lower_case  # type: ignore[union-attr]
    assert torch.allclose(encode(model, tokenizer, texts), st_encode(folder, texts), atol=1e-6)
