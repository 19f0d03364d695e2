"""Model card (``README.md``) written into every compressed checkpoint."""

from __future__ import annotations

import json
from typing import Any

from .sizes import mb
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


def render_card(source: str, architecture: str, summary: dict[str, Any], quality: str | None = None) -> str:
    """The README.md text of a compressed checkpoint: sizes, the distillation run and the measured
    quality table when there are any, and how to load it. The only place a model card is written."""
    sections = [_header(source, architecture, summary)]
    if summary.get("distill"):
        sections.append(distill_section(summary["distill"]))
    if quality is not None:
        sections.append(f"## Quality (measured by `embcompress compress`)\n\n{quality}\n")
    else:
        sections.append(_NO_QUALITY)
    sections.append(_LOADING)
    return "\n".join(sections)


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
and would initialise the embeddings at random. For runtimes that cannot import embcompress, write a
dense copy with `embcompress export --dense THIS_FOLDER -o OUT`.
"""


def _header(source: str, architecture: str, summary: dict[str, Any]) -> str:
    return f"""---
library_name: transformers
tags: [embcompress, compressed-embeddings]
---
# {source} with factorized token embeddings

Produced by [embcompress](https://pypi.org/project/embcompress/) {__version__} from `{source}`
({architecture}), method `{summary.get("method", "unknown")}`.

{module_table(summary.get("modules", []))}

Parameters: {summary.get("params_before", 0):,} -> {summary.get("params_after", 0):,}.
"""
