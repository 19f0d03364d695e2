"""Torch CPU threads for a block of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: unchanged), then restore the previous count.

    One thread makes float reductions run in one fixed order, so results that feed the stored bytes (the
    calibration sample and the transform code) do not depend on ``--threads`` or the machine's core count.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
