"""The ingress deployment: the HTTP API (FastAPI) over handles to the three stage deployments.

Requests flow frontend -> GPT (streamed per segment, several segments in flight) -> vocoder ->
encoder -> client, orchestrated by `indextts.synthesis.Synthesizer` exactly as in one process;
here its stages are clients of the other deployments (`serve_app.clients`: retries when a replica
dies, a prompt 503 when a stage has no live replica).

Cancellation: a client that disconnects (or a request past its timeout) makes Serve (or
`RequestTimeout`) cancel this replica's handler task. The response generator then closes the
synthesizer, which cancels its in-flight segment tasks; each closes its GPT stream, and
`GPTClient` cancels the downstream Serve call, which raises `CancelledError` inside the GPT
deployment's generator, which closes the engine's generator, which aborts the vLLM request.

A failure after the first audio was sent cannot change the status any more: the handler raises,
and Serve's proxy closes the connection without ending the chunked body, so clients see an
incomplete response (SSE streams get an `error` event first), never a complete one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indextts.synthesis import Synthesizer
from indextts.voices import VoiceRegistry
from serve_app.api import ServiceSettings, SpeechService, build_api
from serve_app.clients import FrontendClient, GPTClient, VocoderClient
from serve_app.errors import RETRY_AFTER_S, ApiError, error_response
from serve_app.security import UI_PATH, AccessSettings
from serve_app.ui import mount_ui, ui_url

logger = logging.getLogger(__name__)


class RequestTimeout:
    """ASGI middleware: a request that takes longer than `timeout_s` is cancelled (down to the
    stages' calls). Before its response started it gets a 504 envelope; after, the stream is cut.
    Serve's `http_options.request_timeout_s` is one setting for all applications of a cluster, and
    absent without a config file: this holds the application's own limit either way."""

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        limit = asyncio.timeout(self.timeout_s)
        try:
            async with limit:
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if not limit.expired():
                raise             # not this limit's: the app's own error
            logger.warning("request %s %s timed out after %s s", scope.get("method"), scope.get("path"),
                           self.timeout_s)
            if started:
                raise             # the body is cut short: the client must not take it as complete
            error = ApiError(504, f"the request took longer than {self.timeout_s:g} s", None, "request_timeout")
            await error_response(error)(scope, receive, send)


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
                  max_queued_requests=512, backpressure_config=BackpressureConfig(retry_after_s=RETRY_AFTER_S),
                  graceful_shutdown_timeout_s=30)
@serve.ingress()
class Ingress:
    """FastAPI app over `SpeechService`; the app is built per replica around its handles."""

    def __init__(self, frontend: DeploymentHandle, gpt: DeploymentHandle, vocoder: DeploymentHandle,
                 voices_dir: str, settings: ServiceSettings = ServiceSettings(), lookahead: int = 4,
                 access: AccessSettings = AccessSettings(), request_timeout_s: Optional[float] = None,
                 ui: bool = False):
        registry = VoiceRegistry(voices_dir, max_files=settings.max_upload_files,
                                 max_file_bytes=settings.max_upload_bytes)
        synthesizer = Synthesizer(FrontendClient(frontend), GPTClient(gpt), VocoderClient(vocoder),
                                  lookahead=lookahead)
        self.service = SpeechService(synthesizer, registry, settings, _ServeMetrics())
        self.access = access     # its api_keys_env is read here, in the replica, when the app is built
        self.request_timeout_s = request_timeout_s
        self.ui = ui

    def __serve_build_asgi_app__(self):
        app = build_api(self.service, self.access, ui=mount_ui if self.ui else None)
        if any(getattr(route, "path", None) == UI_PATH for route in app.routes):
            logger.warning("web UI at %s", ui_url())    # warning: replicas drop our modules' info records
        if self.request_timeout_s:
            app.add_middleware(RequestTimeout, timeout_s=self.request_timeout_s)     # the outermost of ours
        return app
