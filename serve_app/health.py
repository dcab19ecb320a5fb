"""Replica health and shutdown hooks shared by the stage deployments: ask the injected stage."""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)


async def check_stage(stage) -> None:
    """Raise if the stage reports itself unhealthy (e.g. a dead vLLM engine); stages without a
    `check_health` are healthy while their replica answers."""
    check = getattr(stage, "check_health", None)
    if check is not None:
        result = check()
        if inspect.isawaitable(result):
            await result


def close_stage(stage) -> None:
    """Release the stage's engine and threads when Serve stops the replica."""
    close = getattr(stage, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # shutting down anyway: log, do not mask the shutdown
        logger.exception("closing %s failed", type(stage).__name__)
