"""embcompress: post-hoc compression of the token embeddings of Hugging Face checkpoints.

Every command has two layers: an in-memory function on an already-loaded model, and a path wrapper
that loads, calls it and writes a checkpoint atomically:

=============  ==========================  ============================
command        in memory                   paths
=============  ==========================  ============================
factorize      :func:`factorize_model`     :func:`factorize_checkpoint`
compress       :func:`compress_model`      :func:`compress_checkpoint`
distill        :func:`distill_model`       :func:`distill_checkpoint`
report         :func:`build_report`        (``embcompress report``)
export         :func:`densify`             :func:`export_dense`
=============  ==========================  ============================

:func:`load_source` loads a model and tokenizer by name (alias, Hub id, folder, GGUF),
:func:`write_checkpoint` writes a factorized model, :func:`load` reads one back.

Importing the package registers the ``embcompress`` quantization method with transformers, so
``AutoModel*.from_pretrained(compressed_dir)`` rebuilds the factorized modules.
"""

from __future__ import annotations

import logging

from .hf_integration import register as _register

_register()

from .checkpoint import load, write_checkpoint  # noqa: E402
from .compress import CompressOptions, CompressResult, compress_checkpoint, compress_model  # noqa: E402
from .config import CompressionConfig, ModuleSpec  # noqa: E402
from .distill import DistillConfig, DistillResult, distill_checkpoint, distill_model  # noqa: E402
from .errors import EmbcompressError  # noqa: E402
from .export import export_dense  # noqa: E402
from .factorize import (  # noqa: E402
    CompressionResult,
    FactorizeOptions,
    factorize_checkpoint,
    factorize_model,
)
from .kinds import ModelKind  # noqa: E402
from .methods import get_method, method_names, register_method  # noqa: E402
from .modules import CompressedEmbedding, FactorizedEmbedding, FactorizedLinear  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402
from .quant import fast_kernels, set_fast_kernels  # noqa: E402
from .report import ReportOptions, build_report  # noqa: E402
from .sources import LoadOptions, load_source  # noqa: E402
from .surgery import densify  # noqa: E402
from .version import FORMAT_VERSION, __version__  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "FORMAT_VERSION",
    "CompressOptions",
    "CompressResult",
    "CompressedEmbedding",
    "CompressionConfig",
    "CompressionResult",
    "DistillConfig",
    "DistillResult",
    "EmbcompressError",
    "FactorizeOptions",
    "FactorizedEmbedding",
    "FactorizedLinear",
    "LoadOptions",
    "ModelKind",
    "ModuleSpec",
    "ReportOptions",
    "__version__",
    "build_report",
    "compress_checkpoint",
    "compress_model",
    "densify",
    "distill_checkpoint",
    "distill_model",
    "export_dense",
    "export_onnx",
    "factorize_checkpoint",
    "factorize_model",
    "fast_kernels",
    "get_method",
    "load",
    "load_source",
    "method_names",
    "register_method",
    "set_fast_kernels",
    "write_checkpoint",
]
