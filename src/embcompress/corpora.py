"""Multilingual evaluation text from what a Debian system already holds: translated man pages.

:func:`man_corpus` strips the groff markup of the gzip'd pages under ``/usr/share/man/<lang>/man*/`` (and
``/usr/share/man/man*/`` for English) and writes one plain-text file per language, blank-line separated
paragraphs, into ``<cache>/corpora/man-<key>/<lang>/man.txt``: the folder-of-languages layout that
``embcompress report --data FOLDER`` evaluates per language. Pages are read in sorted order up to the same
character budget per language, so the corpus is deterministic for a given system.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .cache import cache_dir, cached_entry
from .errors import EmbcompressError

#: Man-page folders per language (the names Debian uses under /usr/share/man).
MAN_LANGUAGES: dict[str, str] = {
    "en": "",
    "de": "de",
    "fr": "fr",
    "es": "es",
    "ja": "ja",
    "zh": "zh_CN",
    "ru": "ru",
    "pl": "pl",
}
MAN_ROOT = Path("/usr/share/man")
#: Bumped when the text extraction changes (a new cache entry is then built).
CORPUS_FORMAT = 3
#: Characters of text kept per language.
DEFAULT_CHARS = 300_000
#: Paragraphs shorter than this are headings or option names, not text.
MIN_PARAGRAPH = 40
#: At most this share of a language's budget comes from one page (a long page such as bash's would fill it).
PAGE_SHARE = 0.05
#: Frequent words of each Latin-script language: a paragraph is kept when it holds more of its language's
#: than of English's (translated pages keep untranslated English paragraphs).
STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and is of to in for with that this be by are or not as on it from an",
        "de": "der die das und ist nicht mit von für zu den ein eine wird werden auf im sie es dem des",
        "fr": "le la les des et est une un pour dans que pas sur du avec ce par sont ou au",
        "es": "el la los las de que y en un una es por para con no se del al lo como",
        "pl": "i w na z się nie do jest to że jak dla lub oraz od przez są jeśli tylko",
    }.items()
}
#: Unicode ranges of the scripts of the other languages; a paragraph is kept when half its letters are in them.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "ja": ((0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xFF66, 0xFF9D)),
    "zh": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "ru": ((0x0400, 0x04FF),),
}

_BREAKS = {"PP", "P", "LP", "SH", "SS", "TP", "IP", "HP", "sp", "br", "RS", "RE", "nf", "fi", "EX", "EE", "TH"}
_FONT_MACROS = {"B", "I", "R", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB"}
_NAMED = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "bu": "\u2022",
          "co": "\u00a9", "hy": "-", "mi": "-", "oq": "\u2018", "cq": "\u2019", "ti": "~", "ha": "^"}  # fmt: skip
_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d+"), ""),  # size changes
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),  # strings
    (re.compile(r"\\\((..)"), None),  # named glyphs
    (re.compile(r"\\\[([^\]]*)\]"), None),
    (re.compile(r"\\[&%:/,|^)\u0020]"), lambda m: " " if m.group(0) == "\\ " else ""),
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\\"(.*)$"), ""),  # trailing comment
]


def _glyph(match: re.Match[str]) -> str:
    return _NAMED.get(match.group(1), "")


def strip_escapes(line: str) -> str:
    """A groff text line without font, size, string and glyph escapes."""
    for pattern, repl in _ESCAPES:
        line = pattern.sub(_glyph if repl is None else repl, line)  # type: ignore[arg-type]
    return line.replace("\\", "")


def in_language(paragraph: str, language: str) -> bool:
    """Whether ``paragraph`` is written in ``language`` (script share or frequent words, see above)."""
    if language in SCRIPTS:
        letters = [c for c in paragraph if c.isalpha()]
        inside = sum(any(lo <= ord(c) <= hi for lo, hi in SCRIPTS[language]) for c in letters)
        return bool(letters) and inside >= 0.5 * len(letters)
    words = paragraph.lower().split()
    own = sum(w in STOPWORDS[language] for w in words)
    if language == "en":
        return own >= 2
    return own > sum(w in STOPWORDS["en"] for w in words)


def _macro_text(line: str) -> tuple[str | None, str]:
    """``(macro, its text argument)`` of a request line."""
    name, _, rest = line[1:].strip().partition(" ")
    args = re.findall(r'"([^"]*)"|(\S+)', rest)
    return name, " ".join(a or b for a, b in args)


def man_paragraphs(source: str) -> list[str]:
    """Plain-text paragraphs of a groff man page (markup, comments and tables dropped)."""
    paragraphs: list[str] = []
    current: list[str] = []
    in_table = skipping = False

    def flush() -> None:
        text = " ".join(" ".join(current).split())
        if len(text) >= MIN_PARAGRAPH:
            paragraphs.append(text)
        current.clear()

    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith((".TS", "'TS")):
            in_table = True
        if in_table:
            in_table = not line.startswith((".TE", "'TE"))
            continue
        if line.startswith((".nf", ".EX")):  # no-fill blocks are code examples and listings
            skipping = True
            flush()
        if skipping:
            skipping = not line.startswith((".fi", ".EE"))
            continue
        if not line.strip():
            flush()
            continue
        if line.startswith((".", "'")):
            if line.startswith(('.\\"', "'\\\"", '.\\"')):
                continue
            name, text = _macro_text(line)
            if name in _BREAKS:
                flush()
            if name in _FONT_MACROS and text:
                current.append(strip_escapes(text))
            continue
        current.append(strip_escapes(line))
    flush()
    return paragraphs


def _pages(language: str) -> Iterator[Path]:
    folder = MAN_ROOT / MAN_LANGUAGES[language] if MAN_LANGUAGES[language] else MAN_ROOT
    for section in sorted(folder.glob("man[1-8]")):
        yield from sorted(section.glob("*.gz"))


def _read_page(path: Path) -> str:
    try:
        return gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return ""


def language_text(language: str, max_chars: int = DEFAULT_CHARS) -> list[str]:
    """Paragraphs of ``language``'s man pages in sorted order, up to ``max_chars`` characters."""
    out: list[str] = []
    seen: set[str] = set()  # translation notices and licence text repeat on every page
    total = 0
    for page in _pages(language):
        text = _read_page(page)
        if text.lstrip().startswith(".so "):  # a link to another page
            continue
        from_page = 0
        for paragraph in man_paragraphs(text):
            if paragraph in seen or from_page >= PAGE_SHARE * max_chars or not in_language(paragraph, language):
                continue
            seen.add(paragraph)
            out.append(paragraph)
            total += len(paragraph)
            from_page += len(paragraph)
            if total >= max_chars:
                return out
    return out


def available_languages(languages: Iterable[str] | None = None) -> list[str]:
    """The requested (default: all of :data:`MAN_LANGUAGES`) languages whose man pages are installed."""
    wanted = list(languages) if languages is not None else list(MAN_LANGUAGES)
    unknown = [lang for lang in wanted if lang not in MAN_LANGUAGES]
    if unknown:
        raise EmbcompressError(f"unknown man-page language(s) {unknown}; valid: {', '.join(MAN_LANGUAGES)}")
    return [lang for lang in wanted if next(_pages(lang), None) is not None]


def man_corpus(languages: Iterable[str] | None = None, max_chars: int = DEFAULT_CHARS) -> Path:
    """A folder with one subfolder of text per language (see the module docstring), built once into the cache.

    Raises :class:`EmbcompressError` when none of the languages has man pages installed (Debian:
    ``apt-get install manpages-de manpages-fr ...``).
    """
    found = available_languages(languages)
    if not found:
        raise EmbcompressError(
            f"no man pages under {MAN_ROOT} for {', '.join(languages or MAN_LANGUAGES)}; install manpages-de etc."
        )
    settings = [found, max_chars, MIN_PARAGRAPH, PAGE_SHARE, CORPUS_FORMAT]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]

    def build(staging: Path) -> None:
        for language in found:
            folder = staging / language
            folder.mkdir(parents=True)
            (folder / "man.txt").write_text("\n\n".join(language_text(language, max_chars)) + "\n")

    return cached_entry(cache_dir() / "corpora" / f"man-{key}", build, f"man-page corpus ({', '.join(found)})")


if __name__ == "__main__":  # python -m embcompress.corpora [LANG ...]: print the corpus folder
    import sys

    print(man_corpus(sys.argv[1:] or None))
