"""ONNX export that keeps the token embedding compressed.

The model is exported by tracing its ``forward`` with the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) and **without constant folding**: every compressed
module's ``forward``/``project`` becomes ordinary ONNX ops on its stored factors (int8 ``codes``
gathered by ``Gather``, ``Cast`` and ``Mul`` by the per-row scale, ``MatMul`` with the basis; the LM
head as ``(h @ basis.T) @ codes.T``), so the file holds the factors as stored, never a dense ``V x H``
matrix. Any :class:`~embcompress.modules.CompressedEmbedding` whose forward is written with
export-friendly tensor ops (no ``.item()``, no data-dependent Python branches) exports the same way;
folding is off so packed codes (shifts, bitwise-and, codebook gathers) stay packed in the file.
onnxruntime may still fold in memory at session start; the file size is what this module controls.

Why this exporter: the ``dynamo=True`` exporter needs ``onnxscript`` and its ``optimize=True``
pass folds constant subgraphs (a ``Cast`` of an int8 initializer becomes an fp32 initializer), and
``do_constant_folding=True`` on the TorchScript exporter does the same. The TorchScript exporter
with ``do_constant_folding=False`` exports tiny Llama, GPT-2 and BERT models with matching outputs
and needs only ``torch`` and ``onnx``.

Layout written by :func:`export_onnx`: ``onnx/model.onnx`` beside ``config.json`` (without the
``quantization_config``: the ONNX graph is self-contained), the tokenizer and the
sentence-transformers module files copied from the checkpoint.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import SUMMARY_NAME, atomic_output_dir, check_output_dir, copy_aux_files, write_json
from .checkpoint import load as load_compressed
from .errors import EmbcompressError
from .modules import CompressedEmbedding
from .quant import fast_kernels

ONNX_DIR = "onnx"
ONNX_NAME = "model.onnx"
#: ONNX opset of the export (LayerNormalization needs 17, integer BitwiseAnd for packed codes 18).
OPSET = 18
_INSTALL = "pip install 'embcompress[onnx]'"


@dataclass
class OnnxSignature:
    """Inputs and output of an exported model, named as transformers' own ONNX exports name them."""

    inputs: list[str]
    output: str
    causal: bool


@dataclass
class OnnxExportResult(OnnxSignature):
    """What :func:`export_model_onnx` wrote: the signature, the file and its size."""

    path: str
    file_bytes: int
    max_abs_diff: float | None = None
    initializers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_package(package: str, purpose: str = "ONNX export") -> Any:
    """The module ``package`` (``onnx``, ``onnxruntime``), or a one-line error saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise EmbcompressError(f"{purpose} needs the {package} package: {_INSTALL}") from None


def onnx_signature(model: nn.Module) -> OnnxSignature:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-style encoders with token
    types) -> ``logits`` for models with an LM head, ``last_hidden_state`` for bare encoders."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise EmbcompressError(
            f"ONNX export of encoder-decoder models ({type(model).__name__}) is not supported; use --dense"
        )
    params = inspect.signature(model.forward).parameters
    causal = bool(getattr(model, "can_generate", lambda: False)())
    inputs = ["input_ids", "attention_mask"]
    if not causal and "token_type_ids" in params and getattr(config, "type_vocab_size", 0) > 1:
        inputs.append("token_type_ids")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return OnnxSignature(inputs, "logits" if head is not None else "last_hidden_state", causal)


class _Traced(nn.Module):
    """Positional inputs -> the one named output (no KV cache for causal models)."""

    def __init__(self, model: nn.Module, signature: OnnxSignature) -> None:
        super().__init__()
        self.model = model
        self.signature = signature

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(zip(self.signature.inputs, inputs, strict=True))
        if self.signature.causal:
            kwargs["use_cache"] = False
        return self.model(**kwargs, return_dict=True)[self.signature.output]


def example_inputs(model: nn.Module, signature: OnnxSignature, batch: int = 2, seq: int = 7) -> list[torch.Tensor]:
    """Deterministic example inputs (the last row padded on the right) for tracing and checking."""
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if not signature.causal:
        mask[-1, seq - 2 :] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return [tensors[name] for name in signature.inputs]


def dense_shapes(model: nn.Module) -> set[tuple[int, int]]:
    """``(V, H)`` and ``(H, V)`` of every compressed module: a float initializer of that shape in the
    file means the factors were multiplied out."""
    shapes: set[tuple[int, int]] = set()
    for module in model.modules():  # an LM head's source is a submodule too
        if isinstance(module, CompressedEmbedding):
            v, h = module.num_embeddings, module.embedding_dim
            shapes |= {(v, h), (h, v)}
    return shapes


def _initializer_bytes(onnx_model: Any) -> dict[str, int]:
    from_type = {1: "float32", 10: "float16", 16: "bfloat16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}
    out: dict[str, int] = {}
    for init in onnx_model.graph.initializer:
        name = from_type.get(init.data_type, str(init.data_type))
        out[name] = out.get(name, 0) + len(init.raw_data)
    return out


def export_model_onnx(
    model: nn.Module, path: str | os.PathLike[str], opset: int = OPSET, check: bool = True
) -> OnnxExportResult:
    """Trace ``model`` (compressed or dense) into ``path`` with dynamic batch and sequence axes.

    ``check`` runs the file in onnxruntime on the example inputs and records the largest absolute
    difference to PyTorch. Raises :class:`EmbcompressError` when a compressed module's factors were
    folded into a dense float ``V x H`` initializer.
    """
    onnx = require_package("onnx")
    signature = onnx_signature(model)
    traced = _Traced(model, signature).eval()  # puts ``model`` in eval mode too
    inputs = example_inputs(model, signature)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*signature.inputs, signature.output]}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on transformers' shape arithmetic
        torch.onnx.export(
            traced,
            tuple(inputs),
            str(out),
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=signature.inputs,
            output_names=[signature.output],
            dynamic_axes=axes,
        )
    onnx_model = onnx.load(str(out), load_external_data=False)
    folded = [
        init.name
        for init in onnx_model.graph.initializer
        if tuple(init.dims) in dense_shapes(model) and init.data_type in (1, 10, 16)
    ]
    if folded:
        raise EmbcompressError(f"ONNX export multiplied the factors out into dense initializer(s) {folded[:3]}")
    result = OnnxExportResult(
        **asdict(signature), path=str(out), file_bytes=out.stat().st_size, initializers=_initializer_bytes(onnx_model)
    )
    if check:
        session = onnx_session(out)
        with torch.no_grad(), fast_kernels(False):
            expected = traced(*inputs).float().numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(signature.inputs, inputs, strict=True)})[0]
        result.max_abs_diff = float(abs(expected - got).max())
    return result


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """A CPU onnxruntime session on ``path``."""
    ort = require_package("onnxruntime", "checking an ONNX export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _write_plain_config(folder: Path, dest: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)
    config.pop("transformers_weights", None)  # embcompress's load guard (hf_integration.LOAD_GUARD_FILE)
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_onnx(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overwrite: bool = False,
    opset: int = OPSET,
    check: bool = True,
) -> OnnxExportResult:
    """Export a compressed checkpoint to ``out/onnx/model.onnx`` beside its config, tokenizer and
    sentence-transformers files (the layout ``SentenceTransformer(out, backend="onnx")`` and optimum's
    ``ORTModel*.from_pretrained(out, subfolder="onnx")`` look for)."""
    require_package("onnx")
    out_path, src = Path(out), Path(folder)
    check_output_dir(out_path, overwrite, [src])
    model = load_compressed(src, dtype=torch.float32)
    with atomic_output_dir(out_path, overwrite, [src]) as tmp:
        result = export_model_onnx(model, tmp / ONNX_DIR / ONNX_NAME, opset=opset, check=check)
        copy_aux_files(src, tmp)
        _write_plain_config(src, tmp)
        record = {**result.to_dict(), "path": f"{ONNX_DIR}/{ONNX_NAME}", "source": str(src), "format": "onnx"}
        write_json(tmp / SUMMARY_NAME, record)
    result.path = str(out_path / ONNX_DIR / ONNX_NAME)
    return result
