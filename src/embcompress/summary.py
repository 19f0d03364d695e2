"""Describe a model's embeddings: shapes, parameter share, tying, spectrum."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .modules import CompressedEmbedding
from .spectral import break_even_rank, energy_curve, rank_for_energy, singular_values
from .surgery import find_targets

ENERGY_RANKS = (16, 32, 64, 128, 256, 512)


def spectrum_summary(matrix: torch.Tensor) -> dict[str, Any]:
    """Energy kept at standard ranks and ranks needed for standard energies."""
    s = singular_values(matrix)
    curve = energy_curve(s)
    return {
        "top_singular_values": [round(float(v), 4) for v in s[:5]],
        "energy_at_rank": {str(r): round(float(curve[r - 1]), 4) for r in ENERGY_RANKS if r <= len(curve)},
        "rank_for_energy": {str(e): rank_for_energy(s, e) for e in (0.5, 0.8, 0.9, 0.95, 0.99)},
    }


def describe_model(model: nn.Module, spectrum: bool = True) -> dict[str, Any]:
    """Shapes, parameter share, tying and (optionally) spectrum of the model's embeddings."""
    total = sum(p.numel() for p in model.parameters())
    inp = model.get_input_embeddings()
    if isinstance(inp, CompressedEmbedding):
        return {"compressed": True, "architecture": type(model).__name__, "params_total": total}
    found = find_targets(model)
    rows, cols = found.vocab_size, found.hidden_size
    emb_params = rows * cols * (1 if found.tied or found.output_module is None else 2)
    info: dict[str, Any] = {
        "compressed": False,
        "architecture": type(model).__name__,
        "params_total": total,
        "input": {"path": found.input_path, "shape": [rows, cols], "aliases": found.input_aliases},
        "output": None if found.output_module is None else {"path": found.output_path, "tied": found.tied},
        "embedding_params": emb_params,
        "embedding_share": emb_params / max(total, 1),
        "dtype": str(found.input_module.weight.dtype).replace("torch.", ""),
        "break_even_rank": break_even_rank(rows, cols, rows + cols),
    }
    if spectrum:
        info["input"]["spectrum"] = spectrum_summary(found.input_module.weight.detach())
        if found.output_module is not None and not found.tied:
            info["output"]["spectrum"] = spectrum_summary(found.output_module.weight.detach())
    return info
