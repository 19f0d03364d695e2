"""embcompress: post-hoc compression of the token embeddings of Hugging Face checkpoints.

Importing the package registers the ``embcompress`` quantization method with transformers, so
``AutoModel*.from_pretrained(compressed_dir)`` rebuilds the factorized modules.
"""

from __future__ import annotations

import logging

from .hf_integration import register as _register

_register()

from .checkpoint import load  # noqa: E402
from .config import CompressionConfig, ModuleSpec  # noqa: E402
from .errors import EmbcompressError  # noqa: E402
from .factorize import (  # noqa: E402
    CompressionResult,
    FactorizeOptions,
    factorize_checkpoint,
    factorize_model,
)
from .methods import get_method, method_names, register_method  # noqa: E402
from .modules import FactorizedEmbedding, FactorizedLinear  # noqa: E402
from .sources import LoadOptions  # noqa: E402
from .surgery import densify  # noqa: E402
from .version import FORMAT_VERSION, __version__  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "FORMAT_VERSION",
    "CompressionConfig",
    "CompressionResult",
    "EmbcompressError",
    "FactorizeOptions",
    "FactorizedEmbedding",
    "FactorizedLinear",
    "LoadOptions",
    "ModuleSpec",
    "__version__",
    "densify",
    "factorize_checkpoint",
    "factorize_model",
    "get_method",
    "load",
    "method_names",
    "register_method",
]
