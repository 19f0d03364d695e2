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
import logging
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
from .onnx_check import CHECK_BATCH, CheckResult, check_model, check_tables, max_positions, quantized_diff, scope_of
from .onnx_quantize import QUANTIZED_FILES, check_quantize, quantize_int8

logger = logging.getLogger(__name__)

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
    table_max_abs_diff: float | None = None
    initializers: dict[str, int] = field(default_factory=dict)
    quantize: str | None = None
    max_abs_diff_float: float | None = None

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

    ``check`` runs the file in onnxruntime against PyTorch (:mod:`embcompress.onnx_check`: the whole
    model on real-size inputs and every row of each compressed embedding) and raises
    :class:`~embcompress.onnx_check.ExportMismatchError` above the tolerance. Raises
    :class:`EmbcompressError` when a compressed module's factors were folded into a dense float ``V x H``
    initializer.
    """
    onnx = require_package("onnx")
    signature = onnx_signature(model)
    traced = _Traced(model, signature).eval()  # puts ``model`` in eval mode too
    out = Path(path)
    _trace(traced, example_inputs(model, signature), out, opset)
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
        checked = verify_onnx(traced, out)
        result.max_abs_diff, result.table_max_abs_diff = checked.max_abs_diff, checked.table_max_abs_diff
    return result


def _trace(traced: _Traced, inputs: list[torch.Tensor], out: Path, opset: int) -> None:
    signature = traced.signature
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*signature.inputs, signature.output]}
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


def check_inputs(model: nn.Module, signature: OnnxSignature) -> list[torch.Tensor]:
    """Real-size inputs of the check: :data:`~embcompress.onnx_check.CHECK_BATCH` sequences of up to
    :data:`~embcompress.onnx_check.CHECK_SEQ` tokens."""
    return example_inputs(model, signature, batch=CHECK_BATCH, seq=max_positions(model))


def verify_onnx(traced: _Traced, path: Path, tables: bool = True) -> CheckResult:
    """Compare the file at ``path`` with ``traced`` (see :mod:`embcompress.onnx_check`); raises above the
    tolerance. ``tables=False`` skips the every-row check."""
    model, signature = traced.model, traced.signature
    inputs = check_inputs(model, signature)
    diff = check_model(traced, inputs, signature.inputs, onnx_session(path), chunk=2 if signature.causal else 4)
    table = check_tables(model, str(path), onnx_session) if tables else None
    logger.info("ONNX vs PyTorch: max |diff| %.3g on the model, %s on every embedding row", diff, table)
    return CheckResult(diff, table, inputs[0].numel())


def onnx_session(path: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """A CPU onnxruntime session on ``path`` (or a serialized model)."""
    ort = require_package("onnxruntime", "checking an ONNX export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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
    quantize: str | None = None,
) -> OnnxExportResult:
    """Export a compressed checkpoint to ``out/onnx/model.onnx`` beside its config, tokenizer and
    sentence-transformers files (the layout ``SentenceTransformer(out, backend="onnx")``, optimum's
    ``ORTModel*.from_pretrained(out, subfolder="onnx")`` and transformers.js look for).

    ``quantize="int8"`` writes ``out/onnx/model_quantized.onnx`` instead (transformers.js' dtype ``"q8"``):
    every other weight int8 per channel (:mod:`embcompress.onnx_quantize`), the embedding in its code.
    The file is checked against PyTorch before anything appears at ``out`` (see :func:`verify_onnx`).
    """
    require_package("onnx")
    check_quantize(quantize)
    if quantize:
        require_package("onnxruntime", "--quantize")
    out_path, src = Path(out), Path(folder)
    check_output_dir(out_path, overwrite, [src])
    model = load_compressed(src, dtype=torch.float32)
    with atomic_output_dir(out_path, overwrite, [src]) as tmp:
        result = export_model_onnx(model, tmp / ONNX_DIR / ONNX_NAME, opset=opset, check=check)
        if quantize:
            _quantize_in_place(model, result, tmp / ONNX_DIR, quantize, check)
        copy_aux_files(src, tmp)
        _write_plain_config(src, tmp)
        name = Path(result.path).name
        record = {**result.to_dict(), "path": f"{ONNX_DIR}/{name}", "source": str(src), "format": "onnx"}
        write_json(tmp / SUMMARY_NAME, record)
    result.path = str(out_path / ONNX_DIR / Path(result.path).name)
    return result


def _quantize_in_place(model: nn.Module, result: OnnxExportResult, folder: Path, quantize: str, check: bool) -> None:
    """Replace the checked float file in ``folder`` by its quantized version; ``result`` describes it after.
    The compressed embeddings must still match PyTorch row for row; the rest differs by int8 rounding
    (recorded as ``max_abs_diff``, ``max_abs_diff_float`` keeps the float file's)."""
    onnx = require_package("onnx")
    src, dest = folder / ONNX_NAME, folder / QUANTIZED_FILES[quantize]
    scopes = [scope_of(name) for name, m in model.named_modules() if isinstance(m, CompressedEmbedding)]
    quantize_int8(src, dest, scopes)
    src.unlink()
    result.quantize, result.max_abs_diff_float = quantize, result.max_abs_diff
    result.path, result.file_bytes = str(dest), dest.stat().st_size
    result.initializers = _initializer_bytes(onnx.load(str(dest), load_external_data=False))
    if check:
        traced = _Traced(model, onnx_signature(model)).eval()
        inputs = check_inputs(model, traced.signature)
        result.max_abs_diff = quantized_diff(traced, inputs, traced.signature.inputs, onnx_session(dest))
        result.table_max_abs_diff = check_tables(model, str(dest), onnx_session)
