"""The GPT deployment (GPU): voice conditioning and code generation (vLLM or the PyTorch engine).

Each call streams one segment's code chunks. When the caller goes away (client disconnect,
request timeout) Serve cancels this generator; closing the stage's generator then aborts the
engine request (vLLM frees the sequence's KV cache, the PyTorch engine stops at the next code).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import AsyncIterator, Callable, Optional

from ray import serve

from indextts.stages import GPTStage, VoiceSpec
from indextts.types import CodeChunk, SamplingOptions, Segment
from serve_app.health import check_stage, close_stage

logger = logging.getLogger(__name__)


@serve.deployment(name="GPT", max_ongoing_requests=64, health_check_period_s=10,
                  health_check_timeout_s=60, graceful_shutdown_timeout_s=30)
class GPT:
    """Thin shim over a `GPTStage`, built inside the replica by `make_stage`."""

    def __init__(self, make_stage: Callable[[], GPTStage], forced_codes: Optional[int] = None):
        self.stage = make_stage()
        self.forced_codes = forced_codes
        if forced_codes:
            logger.warning("benchmark mode: every segment generates exactly %d codes, stop code ignored",
                           forced_codes)

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions,
                       partial: bool = True) -> AsyncIterator[CodeChunk]:
        """Code chunks of one segment; the final one carries all codes and the latents.
        `partial=False` sends only the final chunk (one message instead of one per chunk)."""
        if self.forced_codes:
            options = dataclasses.replace(options, max_codes=self.forced_codes, ignore_stop=True)
        codes = self.stage.generate(voice, segment, options, partial=partial)
        try:
            async for chunk in codes:
                yield chunk
        except asyncio.CancelledError:
            logger.info("segment cancelled by its caller; aborting its generation")
            raise
        finally:
            await codes.aclose()

    async def check_health(self) -> None:
        await check_stage(self.stage)

    def __del__(self):
        close_stage(getattr(self, "stage", None))
