"""Refuse an ONNX export that does not compute what the PyTorch model computes.

Two comparisons, both against PyTorch's reference (float32) kernels:

* the whole model on :data:`CHECK_BATCH` sequences of up to :data:`CHECK_SEQ` tokens (the longest the
  model's positions allow), ids spread over the vocabulary, one row padded;
* every row of every compressed input embedding: the embedding's own nodes are cut out of the file
  (from ``input_ids`` to the module's output, :func:`module_output`) and run on all ``V`` ids. A head
  (``project``) needs no extra run: every position's logits already read all ``V`` rows.

A difference above ``TOLERANCE * max(1, max |PyTorch|)`` raises :class:`ExportMismatchError`; callers
write inside a staging folder, so a refused export leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import EmbcompressError
from .modules import CompressedEmbedding
from .quant import fast_kernels

logger = logging.getLogger(__name__)

#: Largest allowed ``max |onnxruntime - PyTorch|``, relative to ``max(1, max |PyTorch|)``. float32
#: runtimes differ by summation order (MiniLM ~2e-6 on values up to ~10, SmolLM2 logits ~2e-4 on ~30);
#: one wrong code in a row moves it by a codebook step (MiniLM's 7-bit bug: 0.065).
TOLERANCE = 1e-4
CHECK_BATCH = 4
CHECK_SEQ = 128


class ExportMismatchError(EmbcompressError):
    """The exported file computes something else than the PyTorch model."""


@dataclass
class CheckResult:
    """Largest absolute differences onnxruntime vs PyTorch: whole model, and every embedding row."""

    max_abs_diff: float
    table_max_abs_diff: float | None
    tokens_checked: int


def allowed(expected: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """The tolerance for ``expected``: ``tolerance * max(1, max |expected|)``."""
    return tolerance * max(1.0, float(np.abs(expected).max()))


def compare(what: str, expected: np.ndarray, got: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """``max |got - expected|``; raises :class:`ExportMismatchError` above :func:`allowed`."""
    if got.shape != expected.shape:
        raise ExportMismatchError(f"{what}: onnxruntime gives shape {got.shape}, PyTorch {expected.shape}")
    diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
    limit = allowed(expected, tolerance)
    if not diff <= limit:  # also catches NaN
        raise ExportMismatchError(
            f"{what}: the export differs from PyTorch by up to {diff:.3g}, above the tolerance {limit:.3g} "
            f"({tolerance:g} x max(1, max |PyTorch|)); the export was not written"
        )
    return diff


def max_positions(model: nn.Module) -> int:
    """Positions the model accepts (``max_position_embeddings`` / ``n_positions``), at most :data:`CHECK_SEQ`."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(CHECK_SEQ, int(limit)) if limit else CHECK_SEQ


def input_modules(model: nn.Module) -> dict[str, CompressedEmbedding]:
    """Compressed modules the model calls on token ids, by module path (heads excluded)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, CompressedEmbedding) and module.spec.role == "input"
    }


def scope_of(path: str) -> str:
    """Node-name prefix the TorchScript exporter gives a submodule of the traced wrapper's ``model``."""
    return "/model/" + path.replace(".", "/") + "/"


def module_output(graph: Any, path: str, source: str = "input_ids") -> str | None:
    """The one tensor computed from ``source`` inside ``path``'s scope and read outside it (the module's
    output), or ``None``. Tensors not computed from ``source`` are shared constants and casts (the
    exporter reuses equal ones across modules, e.g. a tied head's cast of the factors)."""
    scope = scope_of(path)
    computed = {source}
    for node in graph.node:  # graph order is topological
        if any(name in computed for name in node.input):
            computed.update(node.output)
    made = {out for node in graph.node if node.name.startswith(scope) for out in node.output}
    read = {name for node in graph.node if not node.name.startswith(scope) for name in node.input}
    read |= {out.name for out in graph.output}
    outputs = sorted(made & read & computed)
    return outputs[0] if len(outputs) == 1 else None


def subgraph(proto: Any, source: str, output: str) -> Any:
    """The nodes and initializers ``output`` needs, as a model from graph input ``source`` to float ``output``."""
    from onnx import TensorProto, helper

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {init.name: init for init in graph.initializer}
    needed, todo, seen = [], [output], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in producer:
            seen.add(name)
            continue
        seen.add(name)
        node = producer[name]
        needed.append(node)
        todo += [i for i in node.input if i]
    keep = {id(node) for node in needed}
    nodes = [node for node in graph.node if id(node) in keep]  # graph order is topological
    inputs = [i for i in graph.input if i.name == source]
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    part = helper.make_graph(nodes, "rows", inputs, [out], [inits[n] for n in sorted(seen & inits.keys())])
    return helper.make_model(part, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def check_tables(model: nn.Module, onnx_path: str, session_of: Callable[[Any], Any]) -> float | None:
    """Every row of each compressed input embedding, cut out of the file at ``onnx_path``, vs PyTorch."""
    import onnx

    modules = input_modules(model)
    if not modules:
        return None
    proto = onnx.load(onnx_path)
    worst = 0.0
    for path, module in modules.items():
        output = module_output(proto.graph, path)
        if output is None:
            raise ExportMismatchError(f"cannot find the output of '{path}' in the ONNX graph to check its rows")
        part = subgraph(proto, "input_ids", output)
        ids = torch.arange(module.num_embeddings)[None, :]
        with torch.no_grad(), fast_kernels(False):
            expected = module(ids).float().numpy()
        got = session_of(part.SerializeToString()).run(None, {"input_ids": ids.numpy()})[0]
        worst = max(worst, compare(f"every row of '{path}'", expected, got))
    return worst


def check_model(traced: nn.Module, inputs: list[torch.Tensor], names: list[str], session: Any, chunk: int = 1) -> float:
    """The whole model on ``inputs`` (``chunk`` sequences per run) vs PyTorch's reference kernels."""
    worst = 0.0
    for start in range(0, inputs[0].shape[0], chunk):
        part = [t[start : start + chunk] for t in inputs]
        with torch.no_grad(), fast_kernels(False):
            expected = traced(*part).float().numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(names, part, strict=True)})[0]
        worst = max(worst, compare("the model's output", expected, got))
    return worst


def quantized_diff(traced: nn.Module, inputs: list[torch.Tensor], names: list[str], session: Any) -> float:
    """``max |quantized file - PyTorch float|`` on ``inputs``: int8 rounding, recorded, not refused."""
    with torch.no_grad(), fast_kernels(False):
        expected = traced(*inputs).float().numpy()
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    return float(np.abs(got - expected).max())
