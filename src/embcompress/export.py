"""Export a compressed checkpoint for runtimes that cannot import embcompress."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import transformers
from torch import nn

from .checkpoint import atomic_output_dir, compute_dtype, save_model_files
from .checkpoint import load as load_compressed
from .onnx_check import TOLERANCE, compare, max_positions
from .outputs import reserve_output
from .quant import fast_kernels
from .surgery import densify

logger = logging.getLogger(__name__)


def export_dense(folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> nn.Module:
    """Write a vanilla transformers checkpoint of a compressed model (factors multiplied out), checked
    against the compressed model before it appears at ``out`` (see :func:`write_dense`)."""
    return write_dense(folder, out, overwrite)[0]


def write_dense(
    folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False
) -> tuple[nn.Module, float]:
    """:func:`export_dense`, also returning the largest difference :func:`verify_dense` measured."""
    out_path = Path(out)
    with reserve_output(out_path, overwrite, [Path(folder)]):
        compressed = load_compressed(folder)
        dense = densify(compressed)
        with atomic_output_dir(out_path, overwrite) as tmp:
            save_model_files(dense, tmp, Path(folder))
            diff = verify_dense(compressed, tmp)
    return dense, diff


def _outputs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    kwargs = {"decoder_input_ids": ids} if getattr(model.config, "is_encoder_decoder", False) else {}
    if getattr(model, "can_generate", lambda: False)():
        kwargs["use_cache"] = False
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    logits = getattr(out, "logits", None)
    return (logits if logits is not None else out.last_hidden_state).float()


def verify_dense(compressed: nn.Module, folder: Path) -> float:
    """Load ``folder`` with transformers and compare it with ``compressed``: every row of the input
    embedding, and the model's outputs on real-size inputs; raises
    :class:`~embcompress.onnx_check.ExportMismatchError` above the tolerance (wider for 16-bit weights)."""
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = getattr(transformers, (config.architectures or ["AutoModel"])[0])
    dense = cls.from_pretrained(folder, dtype=compute_dtype(compressed)).eval()
    compressed.eval()
    tolerance = max(TOLERANCE, 2 * torch.finfo(compute_dtype(compressed)).eps)
    vocab = compressed.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, max_positions(compressed)), generator=gen)
    every = torch.arange(vocab)[None, :]
    with torch.no_grad(), fast_kernels(False):
        table = compare(
            "every embedding row",
            compressed.get_input_embeddings()(every).float().numpy(),
            dense.get_input_embeddings()(every).float().numpy(),
            tolerance,
        )
        diff = compare("the model's output", _outputs(compressed, ids).numpy(), _outputs(dense, ids).numpy(), tolerance)
    logger.info("dense export vs compressed: max |diff| %.3g on the model, %.3g on every row", diff, table)
    return max(diff, table)
