"""The ingress deployment: the HTTP API (FastAPI) over handles to the three stage deployments.

Requests flow frontend -> GPT (streamed per segment, several segments in flight) -> vocoder ->
encoder -> client, orchestrated by `indextts.synthesis.Synthesizer` exactly as in one process;
here its stages are clients of the other deployments.

Cancellation: a client that disconnects (or a request past `request_timeout_s`) makes Serve
cancel this replica's handler task. The response generator then closes the synthesizer, which
cancels its in-flight segment tasks; each closes its GPT stream, and `_GPTClient` cancels the
downstream Serve call, which raises `CancelledError` inside the GPT deployment's generator,
which closes the engine's generator, which aborts the vLLM request.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Optional

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from indextts.stages import FrontendStage, GPTStage, VocoderStage
from indextts.synthesis import Synthesizer
from indextts.types import (ChunkSchedule, CodeChunk, FrontendResult, LatentWindow, SamplingOptions, Segment,
                            VoiceSpec)
from indextts.voices import VoiceRegistry
from serve_app.api import ServiceSettings, SpeechService, build_api
from serve_app.security import AccessSettings

logger = logging.getLogger(__name__)


class _FrontendClient(FrontendStage):
    """`FrontendStage` over the Frontend deployment."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        return await self.handle.process.remote(text, max_tokens_per_segment)

    async def ready(self) -> None:
        await self.handle.ready.remote()


class _GPTClient(GPTStage):
    """`GPTStage` over the GPT deployment; closing the stream early cancels the remote call."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle.options(stream=True)

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        responses = self.handle.generate.remote(voice, segment, options, schedule)
        finished = False
        try:
            async for chunk in responses:
                yield chunk
            finished = True
        finally:
            if not finished:
                responses.cancel()

    async def ready(self) -> None:
        await self.handle.options(stream=False).ready.remote()


class _VocoderClient(VocoderStage):
    """`VocoderStage` over the Vocoder deployment."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        return await self.handle.vocode.remote(voice, window)

    async def window_frames(self) -> tuple[int, int]:
        return await self.handle.window_frames.remote()

    async def ready(self) -> None:
        await self.handle.ready.remote()


class _ServeMetrics:
    """Our Prometheus metrics next to Serve's own `ray_serve_*` ones."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.ttfa = Histogram("indextts_time_to_first_audio_s",
                              description="seconds from request to the first synthesised segment",
                              boundaries=[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10])
        self.rtf = Histogram("indextts_real_time_factor",
                             description="synthesis time / audio duration per request",
                             boundaries=[0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5])
        self.audio = Counter("indextts_audio_seconds_total", description="seconds of audio produced")
        self.segments = Counter("indextts_segments_total", description="text segments synthesised")

    def first_audio(self, seconds: float) -> None:
        self.ttfa.observe(seconds)

    def finished(self, audio_seconds: float, elapsed_seconds: float, segments: int) -> None:
        self.audio.inc(audio_seconds)
        self.segments.inc(segments)
        if audio_seconds > 0:
            self.rtf.observe(elapsed_seconds / audio_seconds)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=128,
                  max_queued_requests=512, graceful_shutdown_timeout_s=30)
@serve.ingress()
class Ingress:
    """FastAPI app over `SpeechService`; the app is built per replica around its handles."""

    def __init__(self, frontend: DeploymentHandle, gpt: DeploymentHandle, vocoder: DeploymentHandle,
                 voices_dir: str, settings: ServiceSettings = ServiceSettings(), lookahead: int = 4,
                 access: AccessSettings = AccessSettings()):
        registry = VoiceRegistry(voices_dir, max_files=settings.max_upload_files,
                                 max_file_bytes=settings.max_upload_bytes)
        synthesizer = Synthesizer(_FrontendClient(frontend), _GPTClient(gpt), _VocoderClient(vocoder),
                                  lookahead=lookahead)
        self.service = SpeechService(synthesizer, registry, settings, _ServeMetrics())
        self.access = access     # its api_keys_env is read here, in the replica, when the app is built

    def __serve_build_asgi_app__(self):
        return build_api(self.service, self.access)
