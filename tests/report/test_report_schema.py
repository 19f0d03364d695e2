"""The report's JSON schema, its rendering (markdown / self-contained HTML) and the no-text mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import pytest

import embcompress
from embcompress.report import (
    REPORT_NAME,
    SCHEMA_VERSION,
    EvalOptions,
    ReportOptions,
    build_report,
    report_json,
    to_html,
    to_markdown,
    write_report,
)
from embcompress.sources import ModelSource, load_model, load_tokenizer
from helpers.report import tiny_folder, tiny_student, write_text

OPTIONS = ReportOptions(eval=EvalOptions(max_docs=8, seq_len=16, batch_size=4), speed_repeats=1)
TOP_KEYS = {
    "schema_version", "embcompress_version", "student", "teacher", "task", "data", "size", "fidelity", "spectrum",
    "behaviour", "speed", "references", "glance", "provenance", "needs_text",
}  # fmt: skip
FIDELITY_KEYS = {"relative_error", "weighted_relative_error", "row_cosine_mean", "row_cosine_min", "by_bucket"}


@pytest.fixture(scope="module")
def encoder_reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("enc")
    teacher_dir = tiny_folder(tmp, "bert-encoder")
    student_dir = tiny_student(tmp, teacher_dir, rank=3)
    source = ModelSource(str(teacher_dir), "local", teacher_dir)
    teacher, tok = load_model(source), load_tokenizer(source)
    student = embcompress.load(student_dir)
    text = write_text(tmp / "eval.txt")
    full = build_report(student, teacher, tok, text, OPTIONS, student_dir=student_dir, teacher_name="tiny-bert")
    bare = build_report(student, teacher, tok, None, OPTIONS, student_dir=student_dir)
    return {"full": full, "bare": bare, "dir": student_dir, "tmp": tmp}


def test_json_schema_keys_are_stable(encoder_reports: dict) -> None:
    report = json.loads(report_json(encoder_reports["full"]))
    assert set(report) == TOP_KEYS and report["schema_version"] == SCHEMA_VERSION
    assert report["embcompress_version"] == embcompress.__version__
    assert set(report["fidelity"]["input"]) == FIDELITY_KEYS
    assert set(report["size"]) == {"modules", "embedding", "model", "disk", "serving"}
    assert set(report["speed"]) >= {"forward", "embedding_lookup", "lm_head", "batch_shape"}
    assert report["speed"]["forward"]["ratio"] > 0 and report["speed"]["lm_head"] is None
    assert [r["name"] for r in report["references"]] == ["int8", "q8_0", "q4_0", "nf4", "int4"]
    assert report["provenance"]["method"] == "svd" and report["provenance"]["modules"][0]["rank"] == 3
    assert report["provenance"]["summary"]["source"] and report["needs_text"] == []
    assert report["behaviour"]["neighbours_k"] == 7 and report["task"] == "encoder"


def test_without_text_only_size_and_fidelity(encoder_reports: dict) -> None:
    bare = encoder_reports["bare"]
    assert bare["behaviour"] is None and bare["speed"] is None and bare["data"] is None
    assert bare["fidelity"]["input"]["weighted_relative_error"] is None
    assert "behaviour" in bare["needs_text"] and "fidelity.by_bucket" in bare["needs_text"]
    assert bare["glance"]["metric"] == "relative_error"
    assert "Not measured (pass --data TEXT)" in to_markdown(bare)


def test_markdown_has_every_section(encoder_reports: dict) -> None:
    text = to_markdown(encoder_reports["full"])
    for title in ("At a glance", "Size", "Matrix fidelity", "by token frequency", "Behaviour vs the teacher",
                  "Speed", "Provenance"):  # fmt: skip
        assert f"### {title}" in text or title in text
    assert "| int4 |" in text


def test_html_is_self_contained_with_plots(encoder_reports: dict) -> None:
    page = to_html(encoder_reports["full"])
    assert page.count("<svg") == 3  # spectrum, error by bucket, behaviour by bucket
    assert "src=" not in page and "href=" not in page.replace('href="#', "")
    assert "Energy kept by rank" in page


def test_write_report_into_checkpoint(encoder_reports: dict) -> None:
    path = write_report(encoder_reports["dir"], encoder_reports["full"])
    assert path.name == REPORT_NAME
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and list(data) == sorted(data)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(encoder_reports: dict) -> None:
    html_file = encoder_reports["tmp"] / "report.html"
    html_file.write_text(to_html(encoder_reports["full"]))
    png = encoder_reports["tmp"] / "report.png"
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp()}",
        f"--screenshot={png}", "--window-size=1200,2000", f"file://{html_file}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert png.stat().st_size > 20_000  # a blank page is a few KB
