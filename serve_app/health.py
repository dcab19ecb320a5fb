"""What every stage deployment does with its injected stage: health checks and shutdown."""

from __future__ import annotations

import logging

from indextts.stages import Stage

logger = logging.getLogger(__name__)


class StageDeployment:
    """Base of the stage deployments: Serve's health check asks the stage; the replica's end
    closes it (its engine and threads)."""

    stage: Stage

    async def check_health(self) -> None:
        await self.stage.check_health()

    async def ready(self) -> None:
        """Warm-up (once) and health: what the ingress's readiness route asks of each stage."""
        await self.stage.ready()

    def __del__(self):
        stage = self.__dict__.get("stage")     # None if the constructor failed before building it
        if stage is None:
            return
        try:
            stage.close()
        except Exception:  # shutting down anyway: log, do not mask the shutdown
            logger.exception("closing %s failed", type(stage).__name__)
