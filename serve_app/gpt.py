"""The GPT deployment (GPU): voice conditioning and code generation (vLLM or the PyTorch engine).

Each call streams one segment's code chunks (codes + latents). When the caller goes away (client
disconnect, request timeout) Serve cancels this generator; closing the stage's generator then
aborts the engine request (vLLM frees the sequence's KV cache, the PyTorch engine stops at the
next code).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable, Optional

from ray import serve

from indextts.stages import GPTStage
from indextts.types import ChunkSchedule, CodeChunk, SamplingOptions, Segment, VoiceSpec
from serve_app.health import StageDeployment

logger = logging.getLogger(__name__)


@serve.deployment(name="GPT", max_ongoing_requests=64, max_queued_requests=256, health_check_period_s=10,
                  health_check_timeout_s=60, graceful_shutdown_timeout_s=30)
class GPT(StageDeployment):
    """Thin shim over a `GPTStage`, built inside the replica by `make_stage`."""

    def __init__(self, make_stage: Callable[[], GPTStage]):
        self.stage = make_stage()

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions,
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        """Code chunks of one segment, each with its latents; the last has `final=True`."""
        chunks = self.stage.generate(voice, segment, options, schedule)
        try:
            async for chunk in chunks:
                yield chunk
        except asyncio.CancelledError:
            logger.info("segment cancelled by its caller; aborting its generation")
            raise
        finally:
            await chunks.aclose()
