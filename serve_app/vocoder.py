"""The vocoder deployment (GPU): latents -> 24 kHz audio, batching concurrent segments."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import torch
from ray import serve

from indextts.stages import VocoderStage, VoiceSpec
from serve_app.health import check_stage, close_stage

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


@serve.deployment(name="Vocoder", max_ongoing_requests=32, health_check_period_s=10,
                  health_check_timeout_s=30)
class Vocoder:
    """Thin shim over a `VocoderStage`. Calls arriving together (from any request) are handed to
    the stage as one batch when it can take one (`vocode_batch`);
    otherwise they run concurrently."""

    def __init__(self, make_stage: Callable[[], VocoderStage], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S):
        self.stage = make_stage()
        self._vocode_batch.set_max_batch_size(max_batch_size)
        self._vocode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def vocode(self, voice: VoiceSpec, latents: torch.Tensor) -> torch.Tensor:
        """`[n, D]` latents -> `[n * 1024]` float32 samples."""
        return await self._vocode_batch(voice, latents)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _vocode_batch(self, voices: list[VoiceSpec], latents: list[torch.Tensor]) -> list[torch.Tensor]:
        vocode_batch = getattr(self.stage, "vocode_batch", None)
        if vocode_batch is not None:
            return list(await vocode_batch(voices, latents))
        return list(await asyncio.gather(*(self.stage.vocode(v, x) for v, x in zip(voices, latents))))

    async def check_health(self) -> None:
        await check_stage(self.stage)

    def __del__(self):
        close_stage(getattr(self, "stage", None))
