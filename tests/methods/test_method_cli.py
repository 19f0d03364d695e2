"""``embcompress factorize --method ...`` through the real CLI: budgets, frequencies, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner, Result

import embcompress
from embcompress.cli import app
from embcompress.methods.grouped import GroupedEmbedding
from helpers.methods import single_thread
from helpers.models import make_tiny

WORDS = [f"w{i}" for i in range(60)]


_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result: Result, message: str, out: Path) -> None:
    """Non-zero exit, one ``error:`` line matching ``message``, no traceback, nothing written."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny BERT MLM folder with a WordPiece tokenizer covering ``WORDS``."""
    folder = tmp_path / "src-bert"
    make_tiny("bert-mlm").save_pretrained(folder)
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizer(vocab=str(vocab_file)).save_pretrained(folder)
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Zipf-ish text over ``WORDS``: w0 very frequent, the last words rare."""
    gen = torch.Generator().manual_seed(0)
    probs = 1.0 / torch.arange(1, len(WORDS) + 1, dtype=torch.float64)
    paragraphs = []
    for _ in range(40):
        ids = torch.multinomial(probs, 30, replacement=True, generator=gen).tolist()
        paragraphs.append(" ".join(WORDS[i] for i in ids))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def test_weighted_svd_through_cli(model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["factorize", str(model_dir), "-o", str(out), "--method", "weighted-svd", "--freq-data", str(corpus)]
    result = invoke(*args, "--rank", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["budget"] == {"mode": "rank", "value": 4, "ranks": {"input": 4, "output": 4}}
    module = data["modules"][0]
    assert module["weighted_relative_error"] is not None and not module["serving_dense"]
    summary = json.loads((out / "embcompress.json").read_text())
    assert summary["frequency"]["tokens"] > 1000 and summary["frequency"]["exponent"] == 0.5
    svd_out = tmp_path / "svd"
    assert invoke("factorize", str(model_dir), "-o", str(svd_out), "--rank", "4").exit_code == 0


def test_grouped_through_cli_with_energy_budget(model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "factorize", str(model_dir), "-o", str(out), "--method", "grouped", "--freq-data", str(corpus),
        "--buckets", "10,rest", "--energy", "0.6", "--factor-dtype", "int8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "budget energy 0.6 -> rank input" in result.stdout.replace("\n", " ")
    model = embcompress.load(out)
    emb = model.get_input_embeddings()
    assert isinstance(emb, GroupedEmbedding) and emb.sizes[0] == 10
    assert {int(t) for t in emb.perm[:3]} <= {5, 6, 7, 8, 9}  # w0.. are the most frequent ids


def test_ratio_budget_and_nmf_options(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "factorize", str(model_dir), "-o", str(out), "--method", "nmf", "--ratio", "3", "-O", "max_iter=20", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["budget"]["mode"] == "ratio"
    assert all(m["ratio"] >= 3 for m in data["modules"] if not m["tied_to"])


def test_nonlinear_through_cli_reports_serving_dense(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "factorize", str(model_dir), "-o", str(out), "--method", "nonlinear", "--rank", "3",
        "-O", "steps=5", "-O", "depth=2", "-O", "groups=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "serving materialises the dense" in result.stdout.replace("\n", " ")
    spec = embcompress.load(out).config.quantization_config.compression.modules[0]
    assert spec.options["depth"] == 2 and spec.options["hidden"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope", "--rank", "4"], "unknown method 'nope'; valid methods: grouped, nmf, nonlinear, svd"),
        (["--rank", "4", "-O", "max_iter=5"], "method 'svd' does not take option\\(s\\) max_iter"),
        (["--rank", "4", "--buckets", "10,rest"], "method 'svd' does not take option\\(s\\) buckets"),
        (["--method", "nmf", "--rank", "4", "-O", "steps=5"], "method 'nmf' does not take option\\(s\\) steps"),
        (["--method", "nmf", "--rank", "4", "-O", "solver=magic"], "unknown nmf solver 'magic'"),
        (["--rank", "4", "-O", "novalue"], "--option expects KEY=VALUE"),
        (["--method", "weighted-svd", "--rank", "4"], "needs token frequencies; pass --freq-data"),
        (["--method", "weighted-svd", "--rank", "4", "--freq-data", "MISSING"], "does not exist"),
        (["--method", "weighted-svd", "--rank", "4", "--freq-data", "EMPTY"], "holds no text"),
        (["--method", "weighted-svd", "--rank", "4", "--freq-data", "BINARY"], "looks binary|not UTF-8"),
        (["--rank", "4", "--freq-data", "CORPUS"], "method 'svd' does not use token frequencies"),
        (["--energy", "0"], r"--energy must be in \(0, 1\]"),
        (["--energy", "1.2"], r"--energy must be in \(0, 1\]"),
        (["--ratio", "1"], "--ratio must be greater than 1"),
        (["--ratio", "0.5"], "--ratio must be greater than 1"),
        (["--rank", "4", "--energy", "0.5"], "give only one of --rank, --energy, --ratio"),
        (["--ratio", "500"], r"--ratio 500.0 is not reachable .* nearest feasible value is --ratio"),
        (["--energy", "0.9999"], "nearest feasible value is --energy"),
        (
            ["--method", "grouped", "--rank", "4", "--freq-data", "CORPUS", "--buckets", "10,20"],
            "buckets 10,20 cover 30 of the 96 vocabulary rows",
        ),
        (
            ["--method", "grouped", "--rank", "4", "--freq-data", "CORPUS", "--buckets", "100,rest"],
            "cover 100 of the 96 vocabulary rows",
        ),
        (["--method", "nonlinear", "--rank", "4", "-O", "hidden=7", "-O", "groups=2"], "not divisible by groups"),
    ],
)
def test_bad_method_input_fails_cleanly(
    args: list[str], message: str, model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02\xff" * 100)
    paths = {
        "MISSING": str(tmp_path / "missing.txt"),
        "EMPTY": str(tmp_path / "empty.txt"),
        "BINARY": str(tmp_path / "binary.txt"),
        "CORPUS": str(corpus),
    }
    out = tmp_path / "out"
    result = invoke("factorize", str(model_dir), "-o", str(out), *[paths.get(a, a) for a in args])
    assert_clean_failure(result, message, out)
