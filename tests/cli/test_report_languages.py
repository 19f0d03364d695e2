"""``embcompress report`` on several languages: LANG=PATH texts or a folder of language subfolders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from embcompress.cli import app
from embcompress.errors import EmbcompressError
from embcompress.report.languages import language_sets
from helpers.report import tiny_folder, tiny_student, write_text


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lang")
    teacher = tiny_folder(root, "llama-tied")
    student = tiny_student(root, teacher, rank=4)
    texts = root / "texts"
    for i, lang in enumerate(("en", "xx")):
        (texts / lang).mkdir(parents=True)
        write_text(texts / lang / "text.txt", docs=20, seed=i)
    return teacher, student, texts


def test_folder_of_languages_gives_each_and_the_average(pair: tuple[Path, Path, Path]) -> None:
    teacher, student, texts = pair
    code, out, err = run(
        "report", student, "-t", teacher, "--data", texts, "--no-speed", "--max-tokens", "200", "-f", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    summary = report["languages"]
    assert summary["languages"] == ["en", "xx"] and summary["metrics"][0] == "kl"
    names = [row["name"] for row in summary["rows"]]
    assert names[0] == "student" and {"int8", "q4_0", "nf4"} <= set(names)
    for row in summary["rows"]:
        kls = [row["languages"][lang]["kl"] for lang in ("en", "xx")]
        assert row["average"]["kl"] == pytest.approx(sum(kls) / 2)
    assert report["by_language"]["xx"]["data"]["path"] == str(texts / "xx")
    # the en report is the full report: its behaviour is the student's en row
    assert report["behaviour"]["kl"] == pytest.approx(summary["rows"][0]["languages"]["en"]["kl"])


def test_named_texts_and_markdown_table(pair: tuple[Path, Path, Path]) -> None:
    teacher, student, texts = pair
    code, out, err = run(
        "report", student, "-t", teacher, "--data", f"de={texts / 'en' / 'text.txt'}",
        "--data", f"ja={texts / 'xx' / 'text.txt'}", "--no-speed", "--max-tokens", "200", "-f", "markdown",
    )  # fmt: skip
    assert code == 0, err
    assert "Quality per language" in out and "kl de" in out and "kl average" in out


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (["a.txt", "b.txt"], "name each text LANG=PATH"),
        (["de=x.txt", "de=y.txt"], "names language 'de' twice"),
        (["=x.txt"], "is not LANG=PATH"),
    ],
)
def test_bad_language_sets_are_refused(values: list[str], needle: str) -> None:
    with pytest.raises(EmbcompressError, match=needle):
        language_sets(values)


def test_a_missing_language_text_fails_before_loading(pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    teacher, student, texts = pair
    code, _, err = run("report", student, "-t", teacher, "--data", f"en={texts / 'en'}", "--data", "de=/no/such.txt")
    assert code != 0 and "/no/such.txt" in err and "Traceback" not in err
