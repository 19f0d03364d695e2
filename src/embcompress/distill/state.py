"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest, atomic folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import atomic_output_dir
from ..errors import EmbcompressError

logger = logging.getLogger(__name__)

LAST = "last"
STATE_JSON = "state.json"
TRAINABLE = "trainable.safetensors"
BEST = "best.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_JSON = "optimizer.json"
#: Settings that must match for ``--resume`` to continue the same run.
RESUME_KEYS = (
    "batch_size",
    "grad_accum",
    "seq_len",
    "seed",
    "train",
    "data_free",
    "heldout_fraction",
    "shuffle_buffer",
)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return _cpu(tensors), {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], skeleton: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, slots in skeleton.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(slots)
    return {"state": state, "param_groups": skeleton["param_groups"]}


def save_state(
    folder: Path,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
    info: dict[str, Any],
) -> None:
    """Atomically write ``folder/last`` (replacing the previous checkpoint only once complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / LAST
    with atomic_output_dir(target, overwrite=True) as tmp:
        save_file(_cpu(trainable), str(tmp / TRAINABLE))
        opt_tensors, skeleton = optimizer_to_files(optimizer_state)
        save_file(opt_tensors, str(tmp / OPTIM_TENSORS))
        (tmp / OPTIM_JSON).write_text(json.dumps(skeleton, sort_keys=True, default=float))
        if best is not None:
            save_file(_cpu(best), str(tmp / BEST))
        (tmp / STATE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("checkpoint at step %s written to %s", info.get("step"), target)


def load_state(
    folder: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Read ``folder/last``: trainable tensors, optimizer state dict, best tensors, info."""
    last = folder / LAST
    if not (last / STATE_JSON).is_file():
        raise EmbcompressError(f"--resume: no training checkpoint in '{folder}' (expected {last / STATE_JSON})")
    info = json.loads((last / STATE_JSON).read_text())
    trainable = load_file(str(last / TRAINABLE))
    optim = optimizer_from_files(load_file(str(last / OPTIM_TENSORS)), json.loads((last / OPTIM_JSON).read_text()))
    best = load_file(str(last / BEST)) if (last / BEST).is_file() else None
    return trainable, optim, best, info


def check_resumable(saved: dict[str, Any], current: dict[str, Any], world: int) -> None:
    """Refuse a resume whose data order or optimisation would differ from the interrupted run."""
    diffs = [k for k in RESUME_KEYS if saved["config"].get(k) != current.get(k)]
    if saved.get("world_size", 1) != world:
        diffs.append("number of processes")
    if diffs:
        raise EmbcompressError(
            f"--resume: the checkpoint was made with different {', '.join(diffs)}; rerun with the same settings"
        )
