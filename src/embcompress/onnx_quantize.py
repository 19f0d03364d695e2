"""int8 for the rest of an exported model: onnxruntime's dynamic quantization, per channel.

The export keeps folding off (the embedding's codes must stay packed), so every ``nn.Linear`` weight
reaches its ``MatMul`` through a ``Transpose`` node and ``quantize_dynamic`` sees no weight initializer:
it quantizes nothing. :func:`fold_weight_transposes` stores those float weights transposed instead (the
only folding done); then ``quantize_dynamic`` turns the ``MatMul``\\ s and float ``Gather``\\ s into int8
weights with per-channel scales, as optimum / transformers.js quantize their ``model_quantized.onnx``.
The compressed modules' nodes are excluded by name: their codes are already smaller than int8.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import EmbcompressError

logger = logging.getLogger(__name__)

#: ``--quantize`` values and the file transformers.js loads for each (its dtype "q8").
QUANTIZED_FILES = {"int8": "model_quantized.onnx"}
_FLOAT = 1


def check_quantize(quantize: str | None) -> None:
    """Refuse an unknown ``--quantize`` value before any work."""
    if quantize is not None and quantize not in QUANTIZED_FILES:
        allowed = ", ".join(QUANTIZED_FILES)
        raise EmbcompressError(f"--quantize must be one of: {allowed}; got '{quantize}'")


def _perm(node: Any, rank: int) -> list[int]:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return list(reversed(range(rank)))


def fold_weight_transposes(proto: Any) -> int:
    """Replace each ``Transpose`` of a float initializer by the transposed initializer; returns how many.
    The original initializer is dropped when nothing else reads it."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    folded = 0
    for node in list(graph.node):
        source = inits.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if source is None or source.data_type != _FLOAT:
            continue
        array = numpy_helper.to_array(source)
        graph.initializer.append(
            numpy_helper.from_array(array.transpose(_perm(node, array.ndim)).copy(), node.output[0])
        )
        graph.node.remove(node)
        folded += 1
        if not any(source.name in other.input for other in graph.node):
            graph.initializer.remove(source)
            del inits[source.name]
    return folded


def quantize_int8(src: Path, dest: Path, exclude_prefixes: list[str]) -> None:
    """Write ``src``'s graph with its float weights folded and int8-quantized (dynamic, per channel) to
    ``dest``; nodes whose names start with one of ``exclude_prefixes`` are left as they are."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    folded = fold_weight_transposes(proto)
    exclude = [node.name for node in proto.graph.node if node.name.startswith(tuple(exclude_prefixes))]
    logger.info("int8: %d weight transposes folded, %d compressed-module nodes kept", folded, len(exclude))
    quantize_dynamic(proto, dest, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
