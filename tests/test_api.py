"""The HTTP API over fake stages (no Ray): request handling, every error envelope, streaming,
voices and the original routes. The fakes here also serve the Serve graph tests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from indextts.errors import AudioError, OptionsError, TextError
from indextts.formats import FORMATS
from indextts.batching import BatchQueue
from indextts.stages import FrontendStage, GPTStage, VocoderStage
from indextts.synthesis import Synthesizer
from indextts.types import (REPETITION_PENALTY_MAX, SEED_LIMIT, TEMPERATURE_MAX, TOP_K_MAX, TOP_P_MAX, CodeChunk,
                            FrontendResult, LatentWindow, SamplingOptions, Segment, VoiceSpec)
from indextts.voices import VoiceRegistry
from serve_app.api import LegacySpeechRequest, ServiceSettings, SpeechRequest, SpeechService, build_api

from conftest import CODEC_SLACK_S

SR = 24000
HOP = 1024


# -- fakes implementing the stage interfaces -----------------------------------------------------

class FakeFrontend(FrontendStage):
    """One segment per sentence; one "token" per character."""

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        if "boom-text" in text:
            raise TextError("nothing left to say after normalisation")
        sentences = [s.strip() for s in text.split(".") if s.strip()]
        if not sentences:
            raise TextError("text is empty after normalisation")
        segments = tuple(Segment(tuple(ord(c) % 97 + 2 for c in s[:max_tokens_per_segment]), s)
                         for s in sentences)
        ids = tuple(i for seg in segments for i in seg.ids)
        return FrontendResult(normalized=text, pieces=(), ids=ids, segments=segments)


class FakeGPT(GPTStage):
    """One code per text token; latents encode the voice and the options, so tests can see them.

    `delay` slows each code down; `log` (a file path) records requests and cancellations, which
    lets tests observe replicas in other processes."""

    def __init__(self, delay: float = 0.0, log: str | None = None):
        self.delay = delay
        self.log = log
        self.calls: list[tuple[VoiceSpec, Segment, SamplingOptions]] = []
        self.cancelled = 0

    def _record(self, event: dict) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(event) + "\n")

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       schedule=None):
        if any("broken" in r for r in voice.references):
            raise AudioError("reference audio is silent")
        if segment.text.startswith("crash"):
            raise RuntimeError("CUDA error: secret internal detail at /opt/model.py:42")
        self.calls.append((voice, segment, options))
        self._record({"event": "start", "text": segment.text})
        n = len(segment.ids)
        codes = torch.arange(n, dtype=torch.long) % 8192
        level = 0.1 + (int(voice.key[:4], 16) % 100) / 500 + (0.1 if options.greedy else 0.0)
        latents = torch.full((n, 4), level)
        try:
            for i in range(0, n, 4):       # chunks of 4 codes, each with its latents
                if self.delay:
                    await asyncio.sleep(self.delay * min(4, n - i))
                final = i + 4 >= n
                if final:
                    self._record({"event": "done", "text": segment.text})
                yield CodeChunk(codes=codes[i:i + 4], latents=latents[i:i + 4], start=i, final=final, stopped=final)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            self._record({"event": "cancelled", "text": segment.text})
            raise


class FakeVocoder(VocoderStage):
    """A 200 Hz tone whose level is the latents' value: `[n, D]` -> `[n * 1024]`. Concurrent calls
    are batched as the real stage batches them; each batch's size goes to `log` (a file path), so
    tests can see batching across processes."""

    def __init__(self, log: str | None = None):
        self.log = log
        self._queue = BatchQueue(self._vocode_batch)

    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        return await self._queue.submit(window.latents[window.left:window.left + window.emit])

    async def _vocode_batch(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{len(latents)}\n")
        await asyncio.sleep(0.05)      # a GPU call's latency, so that concurrent calls queue up
        return [tone(x) for x in latents]


def tone(latents: torch.Tensor) -> torch.Tensor:
    n = latents.shape[0] * HOP
    t = torch.arange(n, dtype=torch.float64) / SR
    return (latents[:, 0].repeat_interleave(HOP).double() * torch.sin(2 * math.pi * 200 * t)).float()


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def voices_dir(tmp_path, tiny_dir) -> Path:
    root = tmp_path / "voices"
    root.mkdir()
    shutil.copy(tiny_dir / "ref_a.wav", root / "alice.wav")
    shutil.copy(tiny_dir / "ref_b.wav", root / "bob.wav")
    (root / "broken.wav").write_bytes((tiny_dir / "ref_a.wav").read_bytes())
    (root / "speaker.json").write_text(json.dumps({"alice": ["alice.wav"], "bob": ["bob.wav"],
                                                   "broken": ["broken.wav"]}))
    return root


@pytest.fixture
def gpt() -> FakeGPT:
    return FakeGPT()


@pytest.fixture
def service(voices_dir, gpt) -> SpeechService:
    settings = ServiceSettings(max_input_chars=200, max_upload_files=3, max_upload_bytes=400_000)
    synth = Synthesizer(FakeFrontend(), gpt, FakeVocoder(), lookahead=2)
    return SpeechService(synth, VoiceRegistry(voices_dir, max_files=3, max_file_bytes=400_000), settings)


@pytest.fixture
def client(service) -> TestClient:
    return TestClient(build_api(service), raise_server_exceptions=False)


def speech(client, **body):
    body = {"model": "tts-1", "input": "Hello world. Bye now.", "voice": "alice", **body}
    return client.post("/v1/audio/speech", json=body)


def decode(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of an encoded response."""
    if fmt == "pcm":
        return SR, len(data) / 2 / SR
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        n = sum(f.samples for f in c.decode(stream))
        rate = stream.codec_context.sample_rate
    if fmt == "opus":      # ffmpeg decodes Opus at 48 kHz; the Ogg header carries our 24 kHz
        import soundfile as sf
        assert rate == 48000
        return sf.info(io.BytesIO(data)).samplerate, n / rate
    return rate, n / rate


EXPECTED_S = (len("Hello world") + len("Bye now")) * HOP / SR


# -- the speech endpoint ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ctype", [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac"),
                                       ("flac", "audio/flac"), ("wav", "audio/wav"), ("pcm", "audio/pcm")])
def test_speech_in_every_format(client, fmt, ctype):
    r = speech(client, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ctype
    rate, seconds = decode(r.content, fmt)
    assert rate == SR
    assert seconds == pytest.approx(EXPECTED_S, abs=CODEC_SLACK_S.get(fmt, 0.0) + 1e-9)


def test_default_format_is_mp3_and_voice_may_be_an_object(client, gpt):
    r = speech(client, voice={"id": "bob"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    assert gpt.calls[0][0].name == "bob"


def test_sampling_extras_reach_the_gpt_stage(client, gpt):
    assert speech(client, temperature=0, seed=5, repetition_penalty=2.0, response_format="pcm").status_code == 200
    opts = gpt.calls[0][2]
    assert opts.greedy and opts.repetition_penalty == 2.0
    gpt.calls.clear()
    assert speech(client, temperature=0.7, top_p=0.5, top_k=7, input="One.",
                  response_format="pcm").status_code == 200
    opts = gpt.calls[0][2]
    assert (opts.greedy, opts.temperature, opts.top_p, opts.top_k, opts.seed) == (False, 0.7, 0.5, 7, None)


def test_options_are_built_from_the_given_fields_only(client, gpt):
    """Fields the client leaves out keep SamplingOptions' own defaults (not copies made by the API)."""
    for extras in ({}, {"top_k": 7, "seed": None}, {"temperature": 0, "top_k": 7}):
        assert speech(client, input="One.", response_format="pcm", **extras).status_code == 200
    assert [call[2] for call in gpt.calls] == [SamplingOptions(), SamplingOptions(top_k=7),
                                               SamplingOptions.deterministic(top_k=7)]


def test_max_tokens_per_segment_reaches_the_frontend(client, gpt):
    assert speech(client, input="abcdefghij.", max_tokens_per_segment=4, response_format="pcm").status_code == 200
    assert len(gpt.calls[0][1].ids) == 4


def test_greedy_is_deterministic(client):
    a = speech(client, temperature=0, response_format="wav").content
    b = speech(client, temperature=0, response_format="wav").content
    assert a == b


def test_voice_mixing_passes_both_references(client, gpt, voices_dir):
    assert speech(client, voice="alice+bob", response_format="pcm").status_code == 200
    voice = gpt.calls[0][0]
    assert sorted(Path(r).name for r in voice.references) == ["alice.wav", "bob.wav"]


def test_speed_changes_duration(client):
    r = speech(client, speed=2.0, response_format="wav")
    assert decode(r.content, "wav")[1] == pytest.approx(EXPECTED_S / 2, rel=0.05)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "pcm"])
def test_stream_false_sends_one_sized_file(client, fmt):
    r = speech(client, response_format=fmt, stream=False, temperature=0)
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content) and \
        decode(r.content, fmt)[1] == pytest.approx(EXPECTED_S, abs=CODEC_SLACK_S.get(fmt, 1e-3))
    if fmt == "wav":
        n, streamed = len(r.content), speech(client, response_format=fmt, temperature=0).content
        assert r.content[4:8] + r.content[40:44] == (n - 8).to_bytes(4, "little") + (n - 44).to_bytes(4, "little")
        assert streamed[4:8] + streamed[40:44] == b"\xff" * 8 and streamed[44:] == r.content[44:]


def test_sse_events(client):
    r = speech(client, stream_format="sse", response_format="pcm")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == 2 * round(EXPECTED_S * SR)
    n = len("Hello world") + len("Bye now")
    assert events[-1]["usage"] == {"input_tokens": n, "output_tokens": n, "total_tokens": 2 * n}


def test_audio_streams_segment_by_segment(client):
    with client.stream("POST", "/v1/audio/speech", json={"model": "m", "input": "One two. Three four. Five.",
                                                           "voice": "alice", "response_format": "pcm"}) as r:
        parts = [p for p in r.iter_raw() if p]
    assert len(parts) >= 3


# -- every error answers with the envelope ----------------------------------------------------

def assert_envelope(r, status: int, param=None, message_has: str = ""):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if param is not None:
        assert err["param"] == param
    assert message_has.lower() in err["message"].lower()
    assert "Traceback" not in r.text and "/opt/" not in r.text and "secret" not in r.text


@pytest.mark.parametrize("body,param,message", [
    ({"voice": "nobody"}, "voice", "unknown voice"),
    ({"voice": "alice+nobody"}, "voice", "unknown voice"),
    ({"voice": "../etc"}, "voice", "invalid voice name"),
    ({"voice": ""}, "voice", "empty"),
    ({"input": ""}, "input", "empty"),
    ({"input": "   "}, "input", "empty"),
    ({"input": "x" * 201}, "input", "limit is 200"),
    ({"input": "boom-text"}, "input", "normalisation"),
    ({"response_format": "ogg"}, "response_format", "mp3, opus, aac, flac, wav, pcm"),
    ({"speed": 0.1}, "speed", ""),
    ({"speed": 4.5}, "speed", ""),
    ({"stream_format": "chunks"}, "stream_format", ""),
    ({"stream_format": "sse", "stream": False}, "stream", "needs stream true"),
    ({"temperature": -1}, "temperature", ""),
    ({"top_p": 0}, "top_p", ""),
    ({"seed": -3}, "seed", ""),
    ({"max_tokens_per_segment": 100000}, "max_tokens_per_segment", ""),
    ({"model": None}, "model", ""),
    ({"input": None}, "input", ""),
])
def test_client_mistakes_are_400_envelopes(client, body, param, message):
    base = {"model": "tts-1", "input": "Hello.", "voice": "alice"}
    payload = {k: v for k, v in {**base, **body}.items() if v is not None}
    assert_envelope(client.post("/v1/audio/speech", json=payload), 400, param, message)


# -- each limit has one definition: the HTTP schema is derived from SamplingOptions' and formats' --

def _bounds(model, name: str) -> dict:
    """The JSON-schema bounds (minimum, maximum, exclusive*) of one optional request field."""
    prop = model.model_json_schema()["properties"][name]
    schema = next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), prop)
    return {k: v for k, v in schema.items() if "imum" in k}


def test_http_sampling_bounds_are_sampling_options_bounds():
    assert _bounds(SpeechRequest, "temperature") == {"minimum": 0.0, "maximum": TEMPERATURE_MAX}  # 0 = greedy
    assert _bounds(SpeechRequest, "top_k") == {"minimum": 0, "maximum": TOP_K_MAX}
    assert _bounds(SpeechRequest, "top_p") == {"exclusiveMinimum": 0.0, "maximum": TOP_P_MAX}
    assert _bounds(SpeechRequest, "repetition_penalty") == {"exclusiveMinimum": 0.0,
                                                            "maximum": REPETITION_PENALTY_MAX}
    assert _bounds(SpeechRequest, "seed") == {"minimum": 0, "exclusiveMaximum": SEED_LIMIT}
    # ... and SamplingOptions takes each upper bound and refuses just past it.
    SamplingOptions(temperature=TEMPERATURE_MAX, top_k=TOP_K_MAX, top_p=TOP_P_MAX,
                    repetition_penalty=REPETITION_PENALTY_MAX, seed=SEED_LIMIT - 1)
    for past in ({"temperature": math.nextafter(TEMPERATURE_MAX, math.inf)}, {"top_k": TOP_K_MAX + 1},
                 {"top_p": math.nextafter(TOP_P_MAX, math.inf)},
                 {"repetition_penalty": math.nextafter(REPETITION_PENALTY_MAX, math.inf)}, {"seed": SEED_LIMIT}):
        with pytest.raises(OptionsError):
            SamplingOptions(**past)


@pytest.mark.parametrize("body,param,bound", [
    ({"temperature": 2.5}, "temperature", "2.0"),
    ({"top_k": 2**64}, "top_k", "8194"),
    ({"top_k": TOP_K_MAX + 1}, "top_k", str(TOP_K_MAX)),
    ({"repetition_penalty": 1000}, "repetition_penalty", repr(REPETITION_PENALTY_MAX)),
    ({"seed": 2**63}, "seed", str(SEED_LIMIT)),
])
def test_out_of_bounds_sampling_is_refused_at_the_edge_naming_the_bound(client, gpt, body, param, bound):
    assert_envelope(speech(client, **body), 400, param, bound)
    assert gpt.calls == []                        # refused before any stage saw it


def test_the_sampling_upper_bounds_are_accepted(client, gpt):
    r = speech(client, temperature=TEMPERATURE_MAX, top_k=TOP_K_MAX, top_p=TOP_P_MAX, response_format="pcm")
    assert r.status_code == 200, r.text
    assert (gpt.calls[0][2].temperature, gpt.calls[0][2].top_k) == (TEMPERATURE_MAX, TOP_K_MAX)


def test_response_formats_are_the_formats_module_list():
    for model in (SpeechRequest, LegacySpeechRequest):
        assert model.model_json_schema()["properties"]["response_format"]["enum"] == list(FORMATS)


def test_response_format_is_case_insensitive(client):
    r = speech(client, response_format="WAV")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"


@pytest.mark.parametrize("text", ["!!!", "😀😀", "\u200b\u200f", "。，！", "\x00\x01"])
def test_input_with_nothing_to_speak_is_a_400_with_its_own_code(client, gpt, text):
    assert_envelope(speech(client, input=text), 400, "input", "nothing to speak")
    assert speech(client, input=text).json()["error"]["code"] == "nothing_to_speak"
    assert gpt.calls == []                       # refused before any generation


def test_an_empty_body_says_a_json_body_is_required(client):
    r = client.post("/v1/audio/speech")
    assert_envelope(r, 400, None, "JSON request body is required")
    assert "None" not in r.text


def test_ready_answers_200_when_every_stage_is_ready_and_503_with_retry_after_otherwise(client, gpt):
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"

    async def not_ready():
        raise RuntimeError("engine still starting")
    gpt.ready = not_ready
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert int(r.headers["retry-after"]) > 0 and "starting" not in r.text
    assert client.get("/health").status_code == 200          # liveness is not readiness


def test_malformed_json_and_unknown_routes(client):
    r = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert_envelope(r, 400, None, "json")
    assert_envelope(client.get("/v1/nothing"), 404)
    assert_envelope(client.get("/v1/audio/speech"), 405)


def test_bad_reference_audio_is_a_client_error(client):
    assert_envelope(speech(client, voice="broken"), 400, "voice", "silent")


def test_internal_errors_are_500_without_internals(client):
    assert_envelope(speech(client, input="crash please."), 500, None, "")


def test_errors_after_the_first_segment_end_an_sse_stream_with_an_error_event(client):
    r = speech(client, input="fine. crash later.", stream_format="sse")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "server_error"
    assert "secret" not in r.text


# -- voices -----------------------------------------------------------------------------------

def test_voice_upload_list_use_delete(client, tiny_dir, gpt):
    data = (tiny_dir / "ref_a.wav").read_bytes()
    r = client.post("/v1/audio/voices", data={"name": "carol", "consent": "cons_1"},
                    files=[("audio_sample", ("c1.wav", data, "audio/wav")),
                           ("files", ("c2.wav", data, "audio/wav"))])
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "carol" and r.json()["object"] == "audio.voice" and len(r.json()["files"]) == 2
    listed = client.get("/v1/audio/voices").json()
    assert listed["object"] == "list"
    assert {v["id"]: v["source"] for v in listed["data"]} == {"alice": "preset", "bob": "preset",
                                                              "broken": "preset", "carol": "upload"}
    assert speech(client, voice="carol", response_format="pcm").status_code == 200
    assert len(gpt.calls[0][0].references) == 2
    r = client.delete("/v1/audio/voices/carol")
    assert r.json() == {"id": "carol", "object": "audio.voice.deleted", "deleted": True}
    assert_envelope(speech(client, voice="carol"), 400, "voice", "unknown voice")
    assert_envelope(client.delete("/v1/audio/voices/carol"), 404)


def test_bad_uploads_are_client_errors(client, tiny_dir):
    data = (tiny_dir / "ref_a.wav").read_bytes()
    wav = ("a.wav", data, "audio/wav")
    post = lambda **kw: client.post("/v1/audio/voices", **kw)  # noqa: E731
    assert_envelope(post(json={"name": "x"}), 400, None, "multipart")
    assert_envelope(post(data={"name": "x"}), 400, "audio_sample", "no audio file")
    assert_envelope(post(files=[("audio_sample", wav)]), 400, "name", "required")
    assert_envelope(post(data={"name": "../x"}, files=[("audio_sample", wav)]), 400, "name", "invalid voice name")
    assert_envelope(post(data={"name": "x"}, files=[("audio_sample", ("n.wav", b"not audio", "audio/wav"))]),
                    400, "audio_sample", "not a readable audio file")
    assert_envelope(post(data={"name": "x"}, files=[("audio_sample", wav)] * 4), 400, "audio_sample", "at most")
    assert_envelope(post(data={"name": "x"}, files=[("audio_sample", ("big.wav", b"0" * 400_001, "audio/wav"))]),
                    413, "audio_sample", "larger")
    # a body beyond what the limits allow at all is refused from its Content-Length, unread
    assert_envelope(post(data={"name": "x"}, files=[("audio_sample", ("f.wav", b"0" * 400_000, "audio/wav"))] * 4),
                    413, "audio_sample", "upload is larger")
    assert_envelope(post(data={"name": "alice"}, files=[("audio_sample", wav)]), 409, "name", "preset")
    assert post(data={"name": "x"}, files=[("audio_sample", wav)]).status_code == 200
    assert_envelope(post(data={"name": "x"}, files=[("audio_sample", wav)]), 409, "name", "already exists")
    assert_envelope(client.delete("/v1/audio/voices/alice"), 400, None, "preset")


# -- the original routes ----------------------------------------------------------------------

# -- cancellation -----------------------------------------------------------------------------

def test_closing_the_response_cancels_segments_in_flight(voices_dir):
    gpt = FakeGPT(delay=0.02)
    service = SpeechService(Synthesizer(FakeFrontend(), gpt, FakeVocoder(), lookahead=3),
                            VoiceRegistry(voices_dir))

    async def run():
        voice = service.registry.resolve("alice")
        # The first segment is short, the next two (generated ahead) are far longer, so both are
        # mid-generation when the client leaves; the fourth would only start after a later read.
        audio = await service.audio("One. Two three four five six seven. Eight nine ten eleven twelve. Thirteen.",
                                    voice, SamplingOptions(), 120, "pcm", 1.0)
        stream = audio.__aiter__()
        first = await stream.__anext__()
        await stream.aclose()            # what Starlette does when the client goes away
        await asyncio.sleep(0.05)
        return first

    assert asyncio.run(run())
    assert [segment.text for _, segment, _ in gpt.calls] == ["One", "Two three four five six seven",
                                                             "Eight nine ten eleven twelve"]
    assert gpt.cancelled == 2                      # both segments generated ahead were aborted


def test_the_library_never_imports_ray_or_fastapi():
    code = ("import sys, indextts.formats, indextts.voices, indextts.pipeline, indextts.synthesis; "
            "print(sorted(m for m in ('ray', 'fastapi', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_fakes_produce_the_expected_audio_length():
    async def run():
        synth = Synthesizer(FakeFrontend(), FakeGPT(), FakeVocoder())
        spec = VoiceSpec((str(Path(__file__).parent / "golden/tiny/ref_a.wav"),))
        return await synth.synthesize("Hello world. Bye now.", spec)
    assert np.isclose(asyncio.run(run()).numel() / SR, EXPECTED_S)


@pytest.mark.parametrize("body", [b'[{"model": "m"}]', b'"Hi."', b"42"])
def test_a_body_that_is_not_a_json_object_says_so(client, body):
    r = client.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    assert_envelope(r, 400, None, "must be a JSON object")
    assert "dictionary" not in r.text
