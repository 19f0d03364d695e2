"""``torch.export`` of a compressed model, then (when ``executorch`` is installed) lowering to an
ExecuTorch ``.pte`` program.

The compressed modules are export-clean: the lookup and the LM head use only tensor ops (no
``.item()``, no data-dependent branches), so ``torch.export.export`` captures the int8 factors and
their dequantization in the graph with dynamic batch and sequence sizes.

    python examples/executorch_export.py CHECKPOINT [--out model.pte]

ExecuTorch is pip-installable (``pip install executorch``) but pins its own torch version; it was not
installed when this example was written, so the lowering branch is untested here.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

import embcompress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a compressed checkpoint folder (causal LM)")
    parser.add_argument("--out", default="model.pte")
    args = parser.parse_args()
    model = embcompress.load(args.checkpoint, dtype=torch.float32)
    ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (1, 16))
    seq = torch.export.Dim("seq", min=2, max=1024)
    program = torch.export.export(
        model, (), {"input_ids": ids, "use_cache": False}, dynamic_shapes={"input_ids": {1: seq}, "use_cache": None}
    )
    with torch.no_grad():
        diff = (program.module()(input_ids=ids, use_cache=False).logits - model(input_ids=ids).logits).abs().max()
    print(f"torch.export ok: max |logit diff| vs eager {diff.item():.2e}")
    if importlib.util.find_spec("executorch") is None:
        print("executorch is not installed: pip install executorch to lower the exported program to .pte")
        return
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program)
    with open(args.out, "wb") as handle:
        handle.write(edge.to_executorch().buffer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
