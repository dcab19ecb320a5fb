"""The HTTP API (FastAPI, no Ray): OpenAI's speech API, voice management, the original routes.

`build_api(service)` returns the FastAPI app; `SpeechService` holds what the routes need (the
synthesizer over the three stages, the voice registry, limits), so tests run the API with fake
stages and the Serve ingress runs it with deployment handles.

Errors always use OpenAI's envelope (`serve_app.errors`): 4xx for what the client can fix, 5xx
with a generic message (details go to the log, never the client).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, AsyncIterator, Callable, Literal, Optional, Protocol, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.datastructures import UploadFile

from indextts.audio import SAMPLE_RATE
from indextts.errors import AudioError, OptionsError, VoiceError
from indextts.formats import FORMATS, MAX_SPEED, MIN_SPEED, SpeechEncoder, audio_format
from indextts.synthesis import DEFAULT_MAX_TOKENS_PER_SEGMENT, Synthesizer
from indextts.types import (REPETITION_PENALTY_MAX, SEED_LIMIT, TEMPERATURE_MAX, TOP_K_MAX, TOP_P_MAX,
                            AudioChunk, SamplingOptions, VoiceSpec)
from indextts.voices import VoiceExistsError, VoiceNotFoundError, VoiceRegistry
from serve_app.errors import RETRY_AFTER_S, ApiError, error_object, error_response, install_error_handlers
from serve_app.security import UI_PATH, AccessSettings, install_access_control

logger = logging.getLogger(__name__)

# The original /tts_url route sampled with seed 8 unless told otherwise.
LEGACY_DEFAULT_SEED = 8
UPLOAD_FIELDS = ("audio_sample", "files", "file")
UPLOAD_FORM_SLACK_BYTES = 64 * 1024    # multipart boundaries, headers and the other fields
READY_TIMEOUT_S = 5.0                  # /ready answers 503 when the stages do not all answer in time


# -- request models ---------------------------------------------------------------------------

class VoiceRef(BaseModel):
    id: str


# The formats indextts.formats writes, matched case-insensitively ("WAV" is "wav"; a non-string never matches).
ResponseFormat = Annotated[Literal[tuple(FORMATS)], BeforeValidator(lambda v: str(v).lower())]


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body plus our sampling extras."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str
    voice: Union[str, VoiceRef]
    instructions: Optional[str] = None          # accepted for compatibility, not used
    response_format: ResponseFormat = "mp3"
    # Numbers are strict: JSON numbers only (true, "1.5" and 1.0 for an integer are refused).
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, strict=True)
    stream_format: Literal["audio", "sse"] = "audio"
    # false: the whole file in one response with its Content-Length (wav then carries exact sizes)
    stream: bool = Field(True, strict=True)
    # Sampling extras: SamplingOptions' fields and bounds (indextts.types), except temperature 0 = greedy.
    temperature: Optional[float] = Field(None, ge=0.0, le=TEMPERATURE_MAX, strict=True)
    top_p: Optional[float] = Field(None, gt=0.0, le=TOP_P_MAX, strict=True)
    top_k: Optional[int] = Field(None, ge=0, le=TOP_K_MAX, strict=True)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=REPETITION_PENALTY_MAX, strict=True)
    seed: Optional[int] = Field(None, ge=0, lt=SEED_LIMIT, strict=True)
    max_tokens_per_segment: Optional[int] = Field(None, ge=1, strict=True)

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class LegacySpeechRequest(SpeechRequest):
    """`POST /audio/speech` of the original server: it always answered WAV."""

    response_format: ResponseFormat = "wav"


class TtsUrlRequest(BaseModel):
    text: str
    audio_paths: list[str] = Field(min_length=1)
    seed: Optional[int] = Field(LEGACY_DEFAULT_SEED, ge=0, lt=SEED_LIMIT, strict=True)


class TtsRequest(BaseModel):
    text: str
    character: str


class TtsStreamRequest(BaseModel):
    """`POST /index-tts/v1/tts_stream` of the original's streaming variant; `/index-tts/v1/tts` too."""

    text: str
    reference_id: str                 # a voice of speaker.json (or an upload)
    streaming: bool = False


# The request fields that are SamplingOptions fields of the same name and meaning.
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingOptions)) & set(SpeechRequest.model_fields)


# -- the service ------------------------------------------------------------------------------

class Metrics(Protocol):
    def first_audio(self, seconds: float) -> None: ...

    def finished(self, audio_seconds: float, elapsed_seconds: float, segments: int) -> None: ...


@dataclass(frozen=True)
class ServiceSettings:
    model_name: str = "indextts"
    max_input_chars: int = 4096
    max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT
    max_tokens_per_segment_limit: int = 400
    max_upload_files: int = 8
    max_upload_bytes: int = 20 * 1024 * 1024


@dataclass
class SpeechService:
    synthesizer: Synthesizer
    registry: VoiceRegistry
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    metrics: Optional[Metrics] = None

    def options(self, req: SpeechRequest) -> SamplingOptions:
        """SamplingOptions from the sampling fields the client gave (the others keep SamplingOptions'
        defaults); temperature 0 asks for greedy decoding."""
        given = req.model_dump(include=SAMPLING_FIELDS, exclude_none=True)
        if given.get("temperature") == 0:
            del given["temperature"]
            return SamplingOptions.deterministic(**given)
        return SamplingOptions(**given)

    def check_input(self, text: str, param: str = "input") -> str:
        if not text or not text.strip():
            raise ApiError(400, f"'{param}' is empty; give some text to speak", param, "empty_input")
        if len(text) > self.settings.max_input_chars:
            raise ApiError(400, f"'{param}' is {len(text)} characters; the limit is "
                                f"{self.settings.max_input_chars}", param, "input_too_long")
        return text

    def max_tokens(self, requested: Optional[int]) -> int:
        n = requested or self.settings.max_tokens_per_segment
        if n > self.settings.max_tokens_per_segment_limit:
            raise ApiError(400, f"max_tokens_per_segment must be at most "
                                f"{self.settings.max_tokens_per_segment_limit}, got {n}",
                           "max_tokens_per_segment", "invalid_value")
        return n

    async def speech(self, req: SpeechRequest, response_format: Optional[str] = None) -> "EncodedAudio":
        """The audio of a speech request (the API's routes and the web UI): input, sampling options
        and voice checked as the API does; `response_format` overrides the request's."""
        if not req.stream and req.stream_format == "sse":
            raise ApiError(400, "stream_format 'sse' is a stream: it needs stream true", "stream", "invalid_value")
        text = self.check_input(req.input)
        fmt = audio_format(response_format or req.response_format)
        try:
            options = self.options(req)
        except OptionsError as e:
            raise ApiError(400, str(e), None, "invalid_value") from e
        voice = await asyncio.to_thread(self.registry.resolve, req.voice_name)
        return await self.audio(text, voice, options, self.max_tokens(req.max_tokens_per_segment), fmt.name, req.speed,
                                streaming=req.stream)

    async def audio(self, text: str, voice: VoiceSpec, options: SamplingOptions, max_tokens: int,
                    response_format: str, speed: float, streaming: bool = True) -> "EncodedAudio":
        """Start synthesis and wait for the first segment, so errors still get a status code;
        the rest is encoded and yielded as segments finish."""
        started = time.perf_counter()
        chunks = self.synthesizer.stream(text, voice, options, max_tokens)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        if self.metrics:
            self.metrics.first_audio(time.perf_counter() - started)
        return EncodedAudio(chunks, first, SpeechEncoder(response_format, speed, streaming=streaming),
                            started, self.metrics)


@dataclass
class EncodedAudio:
    """Encoded bytes of one utterance, produced while it is being synthesised."""

    chunks: AsyncIterator[AudioChunk]
    first: Optional[AudioChunk]
    encoder: SpeechEncoder
    started: float
    metrics: Optional[Metrics] = None
    input_tokens: int = 0
    output_tokens: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        segments = 0
        try:
            chunk = self.first
            while chunk is not None:
                segments += bool(chunk.metadata.get("segment_end", True))
                self.input_tokens += int(chunk.metadata.get("text_tokens", 0))
                self.output_tokens += int(chunk.metadata.get("codes", 0))
                # Encoding is CPU work: keep it off the replica's event loop.
                data = await asyncio.to_thread(self.encoder.feed, chunk.samples)
                if data:
                    yield data
                chunk = await _next_or_none(self.chunks)
            tail = await asyncio.to_thread(self.encoder.finish)
            if tail:
                yield tail
        finally:
            await self.chunks.aclose()
        if self.metrics:
            self.metrics.finished(self.encoder.samples_out / SAMPLE_RATE, time.perf_counter() - self.started,
                                  segments)

    async def read(self) -> bytes:
        return b"".join([part async for part in self])

    async def sse(self) -> AsyncIterator[bytes]:
        """OpenAI's `speech.audio.delta` events, then `speech.audio.done` with token usage."""
        try:
            async for data in self:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # headers are gone: report in-band, as OpenAI does
            logger.exception("synthesis failed mid-stream")
            yield _event({"type": "error", "error": error_object(exc)})
            return
        usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                 "total_tokens": self.input_tokens + self.output_tokens}
        yield _event({"type": "speech.audio.done", "usage": usage})


async def _next_or_none(chunks: AsyncIterator[AudioChunk]) -> Optional[AudioChunk]:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


# -- routes -----------------------------------------------------------------------------------

def _voice_object(info) -> dict:
    return {"id": info.name, "object": "audio.voice", "name": info.name, "created_at": info.created_at,
            "type": "audio_sample", "source": info.source, "files": list(info.files)}


def build_api(service: SpeechService, access: AccessSettings = AccessSettings(),
              ui: Optional[Callable[[FastAPI, "SpeechService", AccessSettings], bool]] = None) -> FastAPI:
    """The FastAPI app over `service` (routes documented in README "HTTP API"); `access`: API keys
    and CORS (default: no keys, cross-origin writes refused); `ui`: mounts the web UI at UI_PATH
    (`serve_app.ui.mount_ui`), true when it did; its key check is then the UI's own."""
    app = FastAPI(title="IndexTTS Serve", version="0.1.0")
    install_error_handlers(app)
    install_access_control(app, access, delegated=(UI_PATH,) if ui and ui(app, service, access) else ())
    _add_speech_routes(app, service)
    _add_voice_routes(app, service)
    _add_original_routes(app, service)
    _add_stream_variant_routes(app, service)
    _add_status_routes(app, service)
    return app


async def _speech(service: SpeechService, req: SpeechRequest) -> Response:
    """One speech request (OpenAI's route and the original's): streamed audio or SSE events."""
    audio = await service.speech(req)
    fmt = audio_format(req.response_format)
    if req.stream_format == "sse":
        return StreamingResponse(audio.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    if not req.stream:
        return Response(await audio.read(), media_type=fmt.content_type)
    return StreamingResponse(audio, media_type=fmt.content_type)


def _add_speech_routes(app: FastAPI, service: SpeechService) -> None:
    """OpenAI's speech route."""

    @app.post("/v1/audio/speech")
    async def create_speech(req: SpeechRequest) -> Response:
        return await _speech(service, req)


def _add_voice_routes(app: FastAPI, service: SpeechService) -> None:
    """OpenAI's voice routes: list, upload (multipart), delete."""
    registry, settings = service.registry, service.settings

    @app.get("/v1/audio/voices")
    async def list_voices() -> dict:
        voices = await asyncio.to_thread(registry.list)
        return {"object": "list", "data": [_voice_object(v) for v in voices]}

    @app.post("/v1/audio/voices")
    async def upload_voice(request: Request) -> dict:
        how = ("send the voice as multipart/form-data with a 'name' field and one or more files under "
               "'audio_sample' (or 'files')")
        if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                    "application/x-www-form-urlencoded")):
            raise ApiError(400, how, None, "invalid_upload")
        # Refuse an oversized body before receiving it (the form parser spools every part first).
        most = settings.max_upload_files * settings.max_upload_bytes + UPLOAD_FORM_SLACK_BYTES
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > most:
            raise ApiError(413, f"the upload is larger than {most} bytes ({settings.max_upload_files} "
                                f"files of at most {settings.max_upload_bytes} bytes)", "audio_sample",
                           "file_too_large")
        try:
            form = await request.form(max_files=settings.max_upload_files + 1)
        except Exception as e:   # malformed multipart, or too many parts (the parser's words stay in the log)
            logger.info("unreadable upload form: %s", e)
            raise ApiError(400, f"the upload form cannot be read; {how} (at most {settings.max_upload_files} files)",
                           None, "invalid_upload") from e
        try:
            return await add_voice(service, form)
        finally:
            await form.close()     # its spooled temporary files

    @app.delete("/v1/audio/voices/{name}")
    async def delete_voice(name: str) -> dict:
        try:
            await asyncio.to_thread(registry.delete, name)
        except VoiceNotFoundError as e:
            raise ApiError(404, str(e), "voice_id", "voice_not_found") from e
        except VoiceError as e:          # an invalid name, or a preset (read-only)
            raise ApiError(400, str(e), "voice_id", "invalid_voice") from e
        return {"id": name, "object": "audio.voice.deleted", "deleted": True}


async def add_voice(service: SpeechService, form) -> dict:
    """Register the voice of an upload form: its 'name' and the audio files under UPLOAD_FIELDS."""
    settings = service.settings
    name = form.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'name' is required", "name", "invalid_value")
    uploads = [v for key in UPLOAD_FIELDS for v in form.getlist(key) if isinstance(v, UploadFile)]
    if not uploads:
        raise ApiError(400, "no audio file: attach one or more files under 'audio_sample' (or 'files')",
                       "audio_sample", "invalid_upload")
    if len(uploads) > settings.max_upload_files:
        raise ApiError(400, f"at most {settings.max_upload_files} files per voice",
                       "audio_sample", "invalid_upload")
    files = []
    for upload in uploads:
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"{upload.filename} is larger than "
                                f"{settings.max_upload_bytes} bytes", "audio_sample", "file_too_large")
        files.append((upload.filename or "", data))
    try:
        info = await asyncio.to_thread(service.registry.add, name, files)
    except VoiceExistsError:
        raise
    except (VoiceError, AudioError) as e:
        raise ApiError(400, str(e), "audio_sample" if isinstance(e, AudioError) else "name",
                       "invalid_upload") from e
    return _voice_object(info)


async def _legacy_wav(service: SpeechService, text: str, voice: VoiceSpec, options: SamplingOptions) -> Response:
    """The original server's answer: one whole WAV file."""
    audio = await service.audio(text, voice, options, service.settings.max_tokens_per_segment,
                                "wav", 1.0, streaming=False)
    return Response(await audio.read(), media_type="audio/wav")


def _route_error(exc: Exception, fields: dict[str, str], param: Optional[str] = None) -> JSONResponse:
    """The error envelope of `exc` under this route's own field names: the library's errors name
    OpenAI's fields ('input', 'voice'); `param` names the field of errors that carry none."""
    response = error_response(exc, param)
    body = json.loads(response.body)
    if body["error"]["param"] not in fields:
        return response
    body["error"]["param"] = fields[body["error"]["param"]]
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=headers)


def _add_original_routes(app: FastAPI, service: SpeechService) -> None:
    """The original server's routes, drop-in."""
    registry = service.registry

    @app.post("/tts_url")
    async def tts_url(req: TtsUrlRequest) -> Response:
        try:
            service.check_input(req.text, "text")
            try:
                voice = await asyncio.to_thread(registry.resolve_paths, req.audio_paths)
            except VoiceError as e:
                raise ApiError(404 if isinstance(e, VoiceNotFoundError) else 400, str(e), "audio_paths",
                               "invalid_path") from e
            return await _legacy_wav(service, req.text, voice, SamplingOptions(seed=req.seed))
        except Exception as e:       # a reference file that is not usable audio is the paths' fault
            return _route_error(e, {"input": "text"}, "audio_paths")

    @app.post("/tts")
    async def tts(req: TtsRequest) -> Response:
        try:
            service.check_input(req.text, "text")
            try:
                voice = await asyncio.to_thread(registry.resolve, req.character)
            except VoiceNotFoundError as e:     # the original answered 404 for an unknown character
                raise ApiError(404, str(e), "character", "voice_not_found") from e
            return await _legacy_wav(service, req.text, voice, SamplingOptions())
        except Exception as e:
            return _route_error(e, {"input": "text", "voice": "character"})

    @app.post("/audio/speech")
    async def legacy_speech(req: LegacySpeechRequest) -> Response:
        return await _speech(service, req)

    @app.get("/audio/voices")
    async def legacy_voices() -> dict:
        voices = await asyncio.to_thread(registry.list)
        return {v.name: list(v.files) for v in voices}


def _add_stream_variant_routes(app: FastAPI, service: SpeechService) -> None:
    """The streaming variant's routes: raw 16-bit mono PCM at 24 kHz (sent as it is made with
    `streaming: true`), or one WAV file; both on the same synthesis path as every route."""

    async def synthesis(req: TtsStreamRequest, fmt: str, streaming: bool) -> EncodedAudio:
        service.check_input(req.text, "text")
        try:
            voice = await asyncio.to_thread(service.registry.resolve, req.reference_id)
        except VoiceNotFoundError as e:
            raise ApiError(404, str(e), "reference_id", "voice_not_found") from e
        return await service.audio(req.text, voice, SamplingOptions(), service.settings.max_tokens_per_segment,
                                   fmt, 1.0, streaming=streaming)

    fields = {"input": "text", "voice": "reference_id"}

    @app.post("/index-tts/v1/tts_stream")
    async def tts_stream(req: TtsStreamRequest) -> Response:
        try:
            audio = await synthesis(req, "pcm", req.streaming)
            if req.streaming:
                return StreamingResponse(audio, media_type="audio/pcm")
            return Response(await audio.read(), media_type="audio/pcm")
        except Exception as e:
            return _route_error(e, fields)

    @app.post("/index-tts/v1/tts")
    async def tts_wav(req: TtsStreamRequest) -> Response:
        try:
            audio = await synthesis(req, "wav", False)
            return Response(await audio.read(), media_type="audio/wav")
        except Exception as e:
            return _route_error(e, fields)


def _add_status_routes(app: FastAPI, service: SpeechService) -> None:
    """Liveness and OpenAI's model list."""

    @app.get("/health")
    async def health() -> dict:
        """Liveness (the original's route): this process answers."""
        return {"status": "healthy", "message": "Service is running", "timestamp": time.time()}

    @app.get("/ready")
    async def ready() -> Response:
        """Readiness: every stage warmed up and healthy, asked within READY_TIMEOUT_S; else 503."""
        try:
            await asyncio.wait_for(service.synthesizer.ready(), READY_TIMEOUT_S)
        except Exception as e:      # a stage not up yet, starting, or failing: the log says which
            logger.info("not ready: %s", type(e).__name__)
            return JSONResponse({"status": "unavailable", "timestamp": time.time()}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse({"status": "ready", "timestamp": time.time()})

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": service.settings.model_name, "object": "model",
                                            "created": 0, "owned_by": "indextts"}]}
