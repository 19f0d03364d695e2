"""Model card (``README.md``) written into every compressed checkpoint."""

from __future__ import annotations

from typing import Any

from .version import __version__


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


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
            f"| `{m['path']}` | {m['role']} | {shape} | {m['rank']} | {_fmt_bytes(m['bytes_before'])} | "
            f"{_fmt_bytes(m['bytes_after'])} | {m['ratio']:.1f}x | {err} |"
        )
    return "\n".join(lines)


def render_card(source: str, architecture: str, summary: dict[str, Any]) -> str:
    """The README.md text for a compressed checkpoint."""
    return f"""---
library_name: transformers
tags: [embcompress, compressed-embeddings]
---
# {source} with factorized token embeddings

Produced by [embcompress](https://pypi.org/project/embcompress/) {__version__} from `{source}`
({architecture}), method `{summary["method"]}`.

{module_table(summary["modules"])}

Parameters: {summary["params_before"]:,} -> {summary["params_after"]:,}.

Quality numbers above are matrix reconstruction errors only. Run `embcompress report` on your own
text to measure what the compression costs in behaviour, and compare with the per-row int8/int4
reference rows it prints.

## Loading

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
