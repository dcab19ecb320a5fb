"""The vocoder deployment (GPU): latent windows -> 24 kHz audio.

Windows carry their own context and lookahead, so replicas keep no stream state: any replica
vocodes any window, and autoscaling or a replica's failure splits no stream. Concurrent calls
share BigVGAN calls through the stage's own continuous batching (windows that arrive while a
call runs go together in the next; an idle replica starts at once, no timer).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from ray import serve

from indextts.stages import VocoderStage
from indextts.types import LatentWindow, VoiceSpec
from serve_app.health import StageDeployment

logger = logging.getLogger(__name__)


@serve.deployment(name="Vocoder", max_ongoing_requests=32, health_check_period_s=10,
                  health_check_timeout_s=30)
class Vocoder(StageDeployment):
    """Thin shim over a `VocoderStage`, built inside the replica by `make_stage`."""

    def __init__(self, make_stage: Callable[[], VocoderStage]):
        self.stage = make_stage()

    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        """The window's emitted frames -> their `[emit * 1024]` float32 samples."""
        return await self.stage.vocode(voice, window)

    async def window_frames(self) -> tuple[int, int]:
        """(context, lookahead) frames a window needs around the frames it emits."""
        return await self.stage.window_frames()
