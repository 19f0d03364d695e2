"""Model card (``README.md``) written into every compressed checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .sizes import mb
from .sources import ALIASES
from .version import __version__


def module_table(modules: list[dict[str, Any]]) -> str:
    """Markdown table of per-module sizes and errors."""
    lines = [
        "| module | role | shape | rank | bytes before | bytes after | ratio | rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in modules:
        if m.get("tied_to"):
            lines.append(f"| `{m['path']}` | {m['role']} | tied to `{m['tied_to']}` | {m['rank']} | - | - | - | - |")
            continue
        err = "-" if m.get("relative_error") is None else f"{m['relative_error']:.4f}"
        shape = "x".join(str(s) for s in m["shape"])
        lines.append(
            f"| `{m['path']}` | {m['role']} | {shape} | {m['rank']} | {mb(m['bytes_before'])} | "
            f"{mb(m['bytes_after'])} | {m['ratio']:.1f}x | {err} |"
        )
    return "\n".join(lines)


def distill_section(distill: dict[str, Any]) -> str:
    """Markdown lines on a distillation run (from a summary's ``distill`` entry)."""
    data = distill.get("data")
    return "\n".join(
        [
            "## Distillation",
            "",
            f"Distilled from `{distill.get('teacher')}` for {distill['steps']} steps / {distill['tokens']:,} tokens "
            f"({'data-free' if data is None else data}); stop: {distill['stop_reason']}, "
            f"best step {distill['best_step']}.",
            "",
            f"Held-out ({distill['eval_split']}) before: {json.dumps(distill['before'], sort_keys=True)}",
            "",
            f"Held-out after: {json.dumps(distill['after'], sort_keys=True)}",
            "",
        ]
    )


#: ``pipeline_tag`` by model kind (``ModelKind`` values); sentence-transformers layouts use sentence-similarity.
PIPELINE_TAGS = {"causal-lm": "text-generation", "masked-lm": "fill-mask", "encoder": "feature-extraction"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model_id(source: str) -> str | None:
    """The Hub id of ``source`` (an alias's real id, or the name itself when it looks like one), else ``None``."""
    if source in ALIASES:
        return ALIASES[source].hub_id
    if _HUB_ID.match(source) and not Path(source).expanduser().exists():
        return source
    return None


def front_matter(readme: str | None) -> dict[str, str]:
    """Top-level ``key: value`` scalars of a README's YAML front matter (enough to read ``license``)."""
    if not readme or not readme.startswith("---"):
        return {}
    end = readme.find("\n---", 3)
    fields: dict[str, str] = {}
    for line in readme[3 : end if end > 0 else 0].splitlines():
        match = re.match(r"^([A-Za-z_][\w-]*):\s*(\S.*)$", line)
        if match:
            fields[match.group(1)] = match.group(2).strip().strip("'\"")
    return fields


def card_metadata(
    source: str,
    kind: str | None = None,
    sentence_transformers: bool = False,
    source_readme: str | None = None,
) -> list[str]:
    """YAML front-matter lines following the Hub's conventions for a quantized derivative."""
    lines = []
    base = base_model_id(source)
    if base:
        lines += [f"base_model: {base}", "base_model_relation: quantized"]
    license = front_matter(source_readme).get("license")
    if license:
        lines.append(f"license: {license}")
    lines.append(f"library_name: {'sentence-transformers' if sentence_transformers else 'transformers'}")
    tag = "sentence-similarity" if sentence_transformers else PIPELINE_TAGS.get(str(kind)) if kind else None
    if tag:
        lines.append(f"pipeline_tag: {tag}")
    tags = ["embcompress", "compressed-embeddings"] + (["sentence-transformers"] if sentence_transformers else [])
    lines.append(f"tags: [{', '.join(tags)}]")
    return lines


def render_card(
    source: str,
    architecture: str,
    summary: dict[str, Any],
    quality: str | None = None,
    *,
    kind: str | None = None,
    sentence_transformers: bool = False,
    source_readme: str | None = None,
) -> str:
    """The README.md text of a compressed checkpoint: front matter (``base_model``, ``license``,
    ``library_name``, ``pipeline_tag``, tags), sizes, the distillation run and the measured quality table
    when there are any, and how to load it. The only place a model card is written.

    Keyword-only inputs (all optional): ``kind`` (a ``ModelKind`` value) picks ``pipeline_tag``;
    ``sentence_transformers`` (the source has ``modules.json``) sets ``library_name`` and tags;
    ``source_readme`` (the source's README text) supplies ``license``.
    """
    meta = card_metadata(source, kind, sentence_transformers, source_readme)
    sections = ["---\n" + "\n".join(meta) + "\n---", _header(source, architecture, summary)]
    if summary.get("distill"):
        sections.append(distill_section(summary["distill"]))
    quality_text = _NO_QUALITY if quality is None else f"## Quality (measured by `embcompress compress`)\n\n{quality}\n"
    return "\n".join([*sections, quality_text, _LOADING])


_NO_QUALITY = """Quality numbers above are matrix reconstruction errors only. Run `embcompress report` on your own
text to measure what the compression costs in behaviour, and compare with the per-row int8/int4
reference rows it prints.
"""

_LOADING = """## Loading

```python
import embcompress                      # registers the "embcompress" quantization method
from transformers import AutoModel      # or the class named in config.json
model = embcompress.load("path/to/this/folder")       # checks every factor tensor is present
model = AutoModel.from_pretrained("path/to/this/folder")  # plain transformers also works after the import
```

Without `import embcompress`, transformers does not know the `embcompress` quantization method
(checkpoints with embcompress's load guard then fail to load with a report naming the fix; older ones
would initialise the embeddings at random). For runtimes that cannot import embcompress, write a
dense copy with `embcompress export --dense THIS_FOLDER -o OUT`, or an ONNX model whose embedding stays
compressed with `embcompress export --onnx THIS_FOLDER -o OUT`.
"""


def _header(source: str, architecture: str, summary: dict[str, Any]) -> str:
    return f"""# {source} with compressed token embeddings

Produced by [embcompress](https://pypi.org/project/embcompress/) {__version__} from `{source}`
({architecture}), method `{summary.get("method", "unknown")}`.

{module_table(summary.get("modules", []))}

Parameters: {summary.get("params_before", 0):,} -> {summary.get("params_after", 0):,}.
"""
