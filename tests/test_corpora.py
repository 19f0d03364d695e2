"""Man-page corpus: groff stripped to paragraphs, one language per subfolder, deterministic, cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from embcompress import corpora
from embcompress.errors import EmbcompressError

PAGE = r""".\" comment line
.TH LS 1 "2022" "GNU coreutils" "Dienstprogramme"
.SH BESCHREIBUNG
Auflistung von Informationen über die \fBDATEIen\fP (Standardvorgabe ist das
aktuelle Verzeichnis) \- sortiert\(em alphabetisch.
.TP
\fB\-a\fP, \fB\-\-all\fP
.nf
int main(void) { return 0; }
.fi
.PP
Die obligatorischen Argumente für Optionen sind für deren Kurz\- und Langform gleich.
"""


def test_groff_markup_is_stripped_to_paragraphs() -> None:
    paragraphs = corpora.man_paragraphs(PAGE)
    assert paragraphs == [
        "Auflistung von Informationen über die DATEIen (Standardvorgabe ist das aktuelle Verzeichnis) - "
        "sortiert\u2014 alphabetisch.",
        "Die obligatorischen Argumente für Optionen sind für deren Kurz- und Langform gleich.",
    ]


def test_language_filter_drops_untranslated_english() -> None:
    assert corpora.in_language("Die Einträge werden alphabetisch sortiert, falls der Schalter fehlt", "de")
    assert not corpora.in_language("This option forces the assembler to add a prefix to all branches", "de")
    assert corpora.in_language("イベント指定なしに単語指示子が与えられた場合", "ja")
    assert not corpora.in_language("size = sizeof(*p) * 100;", "ru")


def test_unknown_language_is_one_line() -> None:
    with pytest.raises(EmbcompressError, match=r"unknown man-page language.*'xx'.*valid: en, de"):
        corpora.available_languages(["de", "xx"])


@pytest.mark.skipif(not Path("/usr/share/man/de/man1").is_dir(), reason="manpages-de not installed")
def test_corpus_is_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBCOMPRESS_CACHE", str(tmp_path / "cache"))
    folder = corpora.man_corpus(["en", "de"], max_chars=5000)
    assert sorted(p.name for p in folder.iterdir()) == ["de", "en"]
    text = (folder / "de" / "man.txt").read_text()
    assert len(text) >= 5000 and "\\f" not in text and ".TH" not in text
    again = corpora.language_text("de", 5000)
    assert text == "\n\n".join(again) + "\n"
    assert corpora.man_corpus(["en", "de"], max_chars=5000) == folder
