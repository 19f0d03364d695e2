"""Progress reporting seam: the library reports stages and steps; the CLI renders them with rich."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Protocol

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """Receives progress from long-running library calls."""

    def stage(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[None]:
        """Context for one stage (load, fit, save...), optionally with ``total`` steps."""
        ...

    def advance(self, steps: int = 1, **metrics: float) -> None:
        """Advance the current stage by ``steps`` and show ``metrics``."""
        ...


class LoggingReporter:
    """Default reporter: one log line per stage with its duration."""

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("%s ...", description)
        yield
        logger.info("%s done in %.1fs", description, time.perf_counter() - start)

    def advance(self, steps: int = 1, **metrics: float) -> None:
        if metrics:
            logger.debug("progress %s", metrics)
