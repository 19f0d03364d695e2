"""Human-rated similarity: the gensim files read as published, Spearman as scipy computes it, and the
report section on a real tokenizer with a tiny encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel
from typer.testing import CliRunner

import embcompress
from embcompress.cli import app
from embcompress.errors import EmbcompressError
from embcompress.report import ReportOptions, build_report, to_markdown
from embcompress.report.downstream import (
    GENSIM_INSTALL,
    RatedPairs,
    average_ranks,
    gensim_test_data,
    load_rated_sets,
    rated_similarity,
    spearman,
)
from embcompress.sources import resolve_source
from helpers.models import has_package, requires_minilm
from helpers.report import tiny_folder, tiny_student, write_text

requires_gensim = pytest.mark.skipif(not has_package("gensim"), reason=f"gensim missing ({GENSIM_INSTALL})")


@requires_gensim
def test_the_three_sets_are_read_as_published() -> None:
    lee, simlex, wordsim = load_rated_sets()
    assert len(lee.texts) == 50 and lee.pairs.shape == (1225, 2) and bool((lee.pairs[:, 0] < lee.pairs[:, 1]).all())
    assert lee.texts[0].startswith("The national executive of the strife-torn Democrats")
    assert any("£" in text for text in lee.texts)  # Latin-1, not UTF-8
    assert float(lee.ratings[0]) == 0.3 and float(lee.ratings[12]) == 1.0  # row 0, columns 1 and 13
    assert simlex.pairs.shape == (999, 2) and wordsim.pairs.shape == (353, 2)
    first = simlex.pairs[0]
    assert (simlex.texts[first[0]], simlex.texts[first[1]], float(simlex.ratings[0])) == ("old", "new", 1.58)
    tiger = [i for i, (a, b) in enumerate(wordsim.pairs.tolist()) if wordsim.texts[a] == wordsim.texts[b]]
    assert [float(wordsim.ratings[i]) for i in tiger] == [10.0]  # "tiger tiger", each word embedded once


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (300,), generator=gen).double()  # many ties
    b = a + torch.randn(300, generator=gen, dtype=torch.float64)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_rated_similarity_is_one_for_an_encoder_that_agrees_with_the_ratings() -> None:
    angles = torch.linspace(0, 1.5, 8, dtype=torch.float64)
    points = torch.stack([angles.cos(), angles.sin()], 1)
    pairs = torch.tensor([[0, i] for i in range(1, 8)])
    rated = RatedPairs("lee", [str(i) for i in range(8)], pairs, 1.0 - angles[1:])
    assert rated_similarity(lambda texts: points[[int(t) for t in texts]], [rated]) == {"lee": pytest.approx(1.0)}


def test_without_gensim_the_message_names_the_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "gensim"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from embcompress.report.downstream import load_rated_sets\n"
        "from embcompress.errors import EmbcompressError\n"
        "try:\n    load_rated_sets()\nexcept EmbcompressError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True)
    assert f"run `{GENSIM_INSTALL}`" in out.stdout and "lee.cor" in out.stdout, out.stderr


@requires_gensim
@requires_minilm
def test_the_report_section_scores_original_student_and_references(tmp_path: Path) -> None:
    """A tiny random encoder over MiniLM's real vocabulary (so the English texts tokenize), compressed."""
    source = resolve_source("minilm").path
    folder = tmp_path / "enc"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    BertModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(folder)
    student_dir = tiny_student(tmp_path, folder, rank=4)
    teacher = BertModel.from_pretrained(str(folder)).eval()
    options = ReportOptions(speed=False, references=("int8", "int4"), downstream=True)
    report = build_report(embcompress.load(student_dir), teacher, tokenizer, None, options)
    section = report["downstream"]
    assert list(section["original"]) == ["lee", "simlex999", "wordsim353"]
    assert section["sets"]["lee"]["pairs"] == 1225 and section["sets"]["wordsim353"]["pairs"] == 353
    assert [row["name"] for row in section["rows"]] == ["student", "int8", "int4"]
    for row in section["rows"]:
        for name, value in row["spearman"].items():
            assert -1 <= value <= 1 and row["change"][name] == pytest.approx(value - section["original"][name])
    int8 = section["rows"][1]["change"]
    assert max(abs(v) for v in int8.values()) < 0.02  # int8 barely moves a random encoder's ranking
    assert "Human-rated similarity" in to_markdown(report)
    assert json.loads(json.dumps(section)) == section


def test_downstream_refuses_a_causal_lm_before_any_work(tmp_path: Path) -> None:
    teacher = tiny_folder(tmp_path, "llama-tied")
    student = tiny_student(tmp_path, teacher)
    result = CliRunner().invoke(
        app, ["report", str(student), "--data", str(write_text(tmp_path / "t.txt")), "--downstream"]
    )
    assert result.exit_code == 2
    assert "human-rated similarity (--downstream) measures sentence encoders, not LlamaForCausalLM" in result.stderr
    with pytest.raises(EmbcompressError, match="sentence encoders"):
        build_report(embcompress.load(student), embcompress.load(student), None, None, ReportOptions(downstream=True))


@requires_gensim
def test_gensim_test_data_is_the_installed_wheels_folder() -> None:
    folder = gensim_test_data()
    assert folder.parts[-3:] == ("gensim", "test", "test_data") and (folder / "lee.cor").is_file()
