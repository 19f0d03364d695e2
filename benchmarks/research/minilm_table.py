"""Markdown table of every MiniLM research variant measured so far (from /tmp/codec-cache/minilm-research.json).

python benchmarks/research/minilm_table.py   # also copies the raw results to benchmarks/research/
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
import codec_harness as h

SRC = h.CACHE / "minilm-research.json"


def main() -> None:
    data = json.loads(SRC.read_text())
    shutil.copy(SRC, Path(__file__).parent / "minilm_results.json")
    head = "| variant | bpw | " + " | ".join(f"{c} cos | {c} nn10" for c in h.CORPORA) + " | rel MSE | rel J | layout |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in data.items():
        cells = []
        for c in h.CORPORA:
            cells += [f"{r[c]['cos']:.5f}", f"{r[c]['nn10']:.4f}" if "nn10" in r[c] else "-"]
        lay = str(r.get("layout", "-")).replace(" ", "")
        print(
            f"| `{name}` | {r['bpw']:.3f} | "
            + " | ".join(cells)
            + f" | {r['rel_mse']:.4f} | {r['rel_J']:.4f} | {lay} |"
        )


if __name__ == "__main__":
    main()
