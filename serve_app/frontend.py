"""The text frontend deployment (CPU): normalise, tokenise and segment the input text."""

from __future__ import annotations

import logging
from typing import Callable

from ray import serve

from indextts.stages import FrontendStage
from indextts.types import FrontendResult
from serve_app.health import StageDeployment

logger = logging.getLogger(__name__)


@serve.deployment(name="Frontend", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32,
                  health_check_period_s=10, health_check_timeout_s=30)
class Frontend(StageDeployment):
    """Thin shim over a `FrontendStage`, built inside the replica by `make_stage`."""

    def __init__(self, make_stage: Callable[[], FrontendStage]):
        self.stage = make_stage()

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        return await self.stage.process(text, max_tokens_per_segment)
