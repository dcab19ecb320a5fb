"""The vocoder deployment (GPU): code chunks -> 24 kHz audio.

Concurrent calls share BigVGAN calls through the stage's own continuous batching (chunks that
arrive while a call runs go together in the next; an idle replica starts at once, no timer).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from ray import serve

from indextts.stages import VocoderStage
from indextts.types import CodeChunk, VoiceSpec
from serve_app.health import StageDeployment

logger = logging.getLogger(__name__)


@serve.deployment(name="Vocoder", max_ongoing_requests=32, health_check_period_s=10,
                  health_check_timeout_s=30)
class Vocoder(StageDeployment):
    """Thin shim over a `VocoderStage`, built inside the replica by `make_stage`."""

    def __init__(self, make_stage: Callable[[], VocoderStage]):
        self.stage = make_stage()

    async def vocode(self, voice: VoiceSpec, chunk: CodeChunk) -> torch.Tensor:
        """The chunk's `[n, D]` latents -> `[n * 1024]` float32 samples."""
        return await self.stage.vocode(voice, chunk)
