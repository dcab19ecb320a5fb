"""The stage interfaces, shared by the single-process facade and the Ray Serve graph.

Every stage is an object with async methods; the GPT stage's call is an async generator. The
Serve deployments in `serve_app/` are thin shims over objects of these classes (and the ingress
talks to them through clients of the same classes), so the same synthesizer runs in one process
(`indextts.pipeline`) and as a Serve graph.

Voices travel between stages as a `VoiceSpec` (paths + weights + a content key), never as
tensors: each stage computes its own part of the voice (the GPT stage the conditioning latents,
the vocoder the speaker embedding) once per key and caches it.

Chunks: the GPT stage yields a segment as `CodeChunk`s, each with its codes and their latents;
the synthesizer cuts the latents into `LatentWindow`s with the context and lookahead the vocoder
asks for (`window_frames`), and the vocoder turns each window into the audio of its own frames.
A chunk, and a window, may be a whole segment.
"""

from __future__ import annotations

import abc
from typing import AsyncIterator, Optional

import torch

from indextts.types import (ChunkSchedule, CodeChunk, FrontendResult, LatentWindow, SamplingOptions, Segment,
                            VoiceSpec)


class Stage:
    """Life cycle every stage has; the defaults suit stages with nothing to prepare or release."""

    async def warm_up(self) -> None:
        """Do what would otherwise slow the first request (compilation, first-use kernels)."""

    async def check_health(self) -> None:
        """Raise if the stage cannot serve (e.g. its engine died)."""

    async def ready(self) -> None:
        """Return once the stage can serve at full speed: warmed up and healthy."""
        await self.warm_up()
        await self.check_health()

    def close(self) -> None:
        """Release engines and threads; the stage is unusable afterwards."""


class FrontendStage(Stage, abc.ABC):
    @abc.abstractmethod
    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        """Normalised text, BPE ids and segments of at most `max_tokens_per_segment` ids."""


class GPTStage(Stage, abc.ABC):
    @abc.abstractmethod
    def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                 schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        """The segment's codes with their latents, in chunks cut by `schedule` (None: the
        stage's own); the last has `final=True`. Closing the generator early aborts the generation."""


class VocoderStage(Stage, abc.ABC):
    @abc.abstractmethod
    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        """The window's `emit` frames -> their `[emit * 1024]` float32 samples at 24 kHz."""

    async def window_frames(self) -> tuple[int, int]:
        """(context, lookahead): the latent frames a window needs on each side of the frames it
        emits; (0, 0) for a vocoder whose frames do not depend on their neighbours."""
        return 0, 0
