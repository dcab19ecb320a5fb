"""A catalogue of bad and hostile requests against the real Serve graph on the tiny checkpoint
(`tiny_app`): each case states the exact HTTP status, error `code` and `param` it gets, in
OpenAI's envelope, and no answer may show internals (tracebacks, server paths, object reprs,
library names). The cases fail at the edge (validation, the voice registry, the frontend's
normaliser), so no synthesis runs but for the few accepted ones, which speak a tiny text.
"""

from __future__ import annotations

import http.client
import json
import re
import struct
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
import requests
from requests.structures import CaseInsensitiveDict

pytest.importorskip("ray")

from conftest import TINY  # noqa: E402

WAV = (TINY / "ref_b.wav").read_bytes()
SPEECH = "/v1/audio/speech"
VOICES = "/v1/audio/voices"
DROP = object()            # a field left out of the body
BASE = {"model": "tts-1", "input": "Hi.", "voice": "alice", "response_format": "pcm", "temperature": 0}
MAX_UPLOAD_BYTES = 20 * 1024 * 1024        # AppArgs' default max_upload_mb
# What an answer must never show: tracebacks, server paths, object reprs, the libraries underneath.
LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|/home/|/usr/|site-packages|\b0x[0-9a-f]{6,}|"
                   r"libsndfile|soundfile|pydantic|starlette|fastapi|uvicorn|\bray\b|RayTaskError|torch",
                   re.IGNORECASE)

Kwargs = Union[dict, Callable[[Path], dict]]     # requests' keyword arguments, or built from voices_dir


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    route: str
    kwargs: Kwargs
    status: int
    code: Optional[str]            # None: an accepted request (200 with audio)
    param: Any = DROP              # DROP: not checked (no single field is at fault)
    headers: dict = field(default_factory=dict)


def speech(**fields) -> dict:
    body = {k: v for k, v in {**BASE, **fields}.items() if v is not DROP}
    return {"json": body}


def raw(data: bytes, content_type: Optional[str] = "application/json") -> dict:
    return {"data": data, "headers": {"content-type": content_type} if content_type else {}}


def upload(name: Any = "newvoice", files: Any = None, **extra) -> dict:
    files = [("audio_sample", ("a.wav", WAV, "audio/wav"))] if files is None else files
    data = {} if name is DROP else {"name": name}
    return {"data": {**data, **extra}, "files": files}


def wav_header(channels: int, rate: int = 24000, bits: int = 16) -> bytes:
    """A WAV file whose header declares `channels` (and a few frames of data)."""
    block = channels * bits // 8
    data = b"\x00\x01" * channels * 100
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", len(data)) + data)


def surrogate(field_: str, value: str) -> dict:
    """A body with a raw JSON escape in one field (a lone surrogate cannot be built from a Python str)."""
    body = json.dumps({k: v for k, v in BASE.items() if k != field_})
    return raw(body[:-1].encode() + f', "{field_}": "{value}"}}'.encode())


def one(name: str) -> list:
    return [("audio_sample", (name, WAV, "audio/wav"))]


NOTHING = "nothing_to_speak"
INVALID = "invalid_value"


CASES = [
    # -- POST /v1/audio/speech: input ---------------------------------------------------------
    Case("input-missing", "POST", SPEECH, speech(input=DROP), 400, INVALID, "input"),
    Case("input-empty", "POST", SPEECH, speech(input=""), 400, "empty_input", "input"),
    Case("input-whitespace", "POST", SPEECH, speech(input=" \n\t  "), 400, "empty_input", "input"),
    Case("input-too-long", "POST", SPEECH, speech(input="a" * 4097), 400, "input_too_long", "input"),
    Case("input-number", "POST", SPEECH, speech(input=5), 400, INVALID, "input"),
    Case("input-null", "POST", SPEECH, speech(input=None), 400, INVALID, "input"),
    Case("input-punctuation", "POST", SPEECH, speech(input="!!!"), 400, NOTHING, "input"),
    Case("input-cjk-punctuation", "POST", SPEECH, speech(input="。，！"), 400, NOTHING, "input"),
    Case("input-emoji", "POST", SPEECH, speech(input="😀🎉👍"), 400, NOTHING, "input"),
    Case("input-control-chars", "POST", SPEECH, speech(input="\x01\x02\x1b\x7f\x08"), 400, NOTHING, "input"),
    Case("input-nul", "POST", SPEECH, speech(input="\x00"), 400, NOTHING, "input"),
    Case("input-nuls", "POST", SPEECH, speech(input="\x00\x00\x00"), 400, NOTHING, "input"),
    Case("input-zero-width-rtl", "POST", SPEECH, speech(input="\u200b\u200f\u202e\ufeff"), 400, NOTHING, "input"),
    Case("input-lone-surrogate", "POST", SPEECH, surrogate("input", "\\ud800"), 400, NOTHING, "input"),
    Case("input-lone-low-surrogates", "POST", SPEECH, surrogate("input", "\\udfff\\udc00"), 400, NOTHING, "input"),
    # -- voice --------------------------------------------------------------------------------
    Case("voice-unknown", "POST", SPEECH, speech(voice="nobody"), 400, "voice_not_found", "voice"),
    Case("voice-empty", "POST", SPEECH, speech(voice=""), 400, "invalid_voice", "voice"),
    Case("voice-missing", "POST", SPEECH, speech(voice=DROP), 400, INVALID, "voice"),
    Case("voice-traversal", "POST", SPEECH, speech(voice="../../etc/passwd"), 400, "invalid_voice", "voice"),
    Case("voice-absolute", "POST", SPEECH, speech(voice="/etc/passwd"), 400, "invalid_voice", "voice"),
    Case("voice-300-chars", "POST", SPEECH, speech(voice="a" * 300), 400, "invalid_voice", "voice"),
    Case("voice-mixed-unknown", "POST", SPEECH, speech(voice="alice+nobody"), 400, "voice_not_found", "voice"),
    Case("voice-negative-weight", "POST", SPEECH, speech(voice="alice:-1+bob"), 400, "invalid_voice", "voice"),
    Case("voice-zero-weight", "POST", SPEECH, speech(voice="alice:0"), 400, "invalid_voice", "voice"),
    Case("voice-text-weight", "POST", SPEECH, speech(voice="alice:abc"), 400, "invalid_voice", "voice"),
    Case("voice-nan-weight", "POST", SPEECH, speech(voice="alice:nan+bob"), 400, "invalid_voice", "voice"),
    Case("voice-inf-weight", "POST", SPEECH, speech(voice="alice:inf"), 400, "invalid_voice", "voice"),
    Case("voice-trailing-plus", "POST", SPEECH, speech(voice="alice+"), 400, "invalid_voice", "voice"),
    Case("voice-too-many-mixed", "POST", SPEECH, speech(voice="+".join(["alice"] * 9)), 400, "invalid_voice", "voice"),
    Case("voice-lone-surrogate", "POST", SPEECH, surrogate("voice", "\\ud800"), 400, "invalid_voice", "voice"),
    Case("voice-object-unknown", "POST", SPEECH, speech(voice={"id": "nobody"}), 400, "voice_not_found", "voice"),
    Case("voice-object-without-id", "POST", SPEECH, speech(voice={"name": "alice"}), 400, INVALID, "voice"),
    Case("voice-list", "POST", SPEECH, speech(voice=["alice"]), 400, INVALID, "voice"),
    Case("voice-number", "POST", SPEECH, speech(voice=7), 400, INVALID, "voice"),
    # -- sampling fields: bounds and types ----------------------------------------------------
    Case("temperature-negative", "POST", SPEECH, speech(temperature=-0.1), 400, INVALID, "temperature"),
    Case("temperature-2.5", "POST", SPEECH, speech(temperature=2.5), 400, INVALID, "temperature"),
    Case("temperature-string", "POST", SPEECH, speech(temperature="hot"), 400, INVALID, "temperature"),
    Case("temperature-bool", "POST", SPEECH, speech(temperature=True), 400, INVALID, "temperature"),
    Case("temperature-nan", "POST", SPEECH, raw(b'{"model":"m","input":"Hi.","voice":"alice","temperature":NaN}'),
         400, INVALID, "temperature"),
    Case("top_p-0", "POST", SPEECH, speech(top_p=0), 400, INVALID, "top_p"),
    Case("top_p-1.5", "POST", SPEECH, speech(top_p=1.5), 400, INVALID, "top_p"),
    Case("top_p-string", "POST", SPEECH, speech(top_p="0.5"), 400, INVALID, "top_p"),
    Case("top_p-infinity", "POST", SPEECH, raw(b'{"model":"m","input":"Hi.","voice":"alice","top_p":Infinity}'),
         400, INVALID, "top_p"),
    Case("top_k-negative", "POST", SPEECH, speech(top_k=-1), 400, INVALID, "top_k"),
    Case("top_k-above-vocabulary", "POST", SPEECH, speech(top_k=8195), 400, INVALID, "top_k"),
    Case("top_k-2**64", "POST", SPEECH, speech(top_k=2**64), 400, INVALID, "top_k"),
    Case("top_k-fraction", "POST", SPEECH, speech(top_k=1.5), 400, INVALID, "top_k"),
    Case("top_k-bool", "POST", SPEECH, speech(top_k=True), 400, INVALID, "top_k"),
    Case("repetition_penalty-0", "POST", SPEECH, speech(repetition_penalty=0), 400, INVALID, "repetition_penalty"),
    Case("repetition_penalty-101", "POST", SPEECH, speech(repetition_penalty=101), 400, INVALID,
         "repetition_penalty"),
    Case("repetition_penalty-list", "POST", SPEECH, speech(repetition_penalty=[1]), 400, INVALID,
         "repetition_penalty"),
    Case("seed-negative", "POST", SPEECH, speech(seed=-1), 400, INVALID, "seed"),
    Case("seed-2**63", "POST", SPEECH, speech(seed=2**63), 400, INVALID, "seed"),
    Case("seed-string", "POST", SPEECH, speech(seed="42"), 400, INVALID, "seed"),
    Case("seed-bool", "POST", SPEECH, speech(seed=True), 400, INVALID, "seed"),
    Case("speed-0.2", "POST", SPEECH, speech(speed=0.2), 400, INVALID, "speed"),
    Case("speed-4.1", "POST", SPEECH, speech(speed=4.1), 400, INVALID, "speed"),
    Case("speed-zero", "POST", SPEECH, speech(speed=0), 400, INVALID, "speed"),
    Case("speed-null", "POST", SPEECH, speech(speed=None), 400, INVALID, "speed"),
    Case("speed-string", "POST", SPEECH, speech(speed="fast"), 400, INVALID, "speed"),
    Case("max_tokens-0", "POST", SPEECH, speech(max_tokens_per_segment=0), 400, INVALID, "max_tokens_per_segment"),
    Case("max_tokens-huge", "POST", SPEECH, speech(max_tokens_per_segment=10**9), 400, INVALID,
         "max_tokens_per_segment"),
    Case("max_tokens-string", "POST", SPEECH, speech(max_tokens_per_segment="40"), 400, INVALID,
         "max_tokens_per_segment"),
    # -- formats, model -----------------------------------------------------------------------
    Case("format-unknown", "POST", SPEECH, speech(response_format="ogg"), 400, INVALID, "response_format"),
    Case("format-empty", "POST", SPEECH, speech(response_format=""), 400, INVALID, "response_format"),
    Case("format-number", "POST", SPEECH, speech(response_format=3), 400, INVALID, "response_format"),
    Case("stream_format-unknown", "POST", SPEECH, speech(stream_format="chunks"), 400, INVALID, "stream_format"),
    Case("stream_format-upper", "POST", SPEECH, speech(stream_format="SSE"), 400, INVALID, "stream_format"),
    Case("model-missing", "POST", SPEECH, speech(model=DROP), 400, INVALID, "model"),
    Case("model-empty", "POST", SPEECH, speech(model=""), 400, INVALID, "model"),
    # -- the body itself ----------------------------------------------------------------------
    Case("body-not-json", "POST", SPEECH, raw(b"{not json"), 400, INVALID, None),
    Case("body-json-array", "POST", SPEECH, raw(b'[{"model": "m"}]'), 400, INVALID, None),
    Case("body-json-null", "POST", SPEECH, raw(b"null"), 400, INVALID, None),
    Case("body-json-string", "POST", SPEECH, raw(b'"Hi."'), 400, INVALID, None),
    Case("body-empty", "POST", SPEECH, raw(b""), 400, INVALID, None),
    Case("body-text-plain", "POST", SPEECH, raw(json.dumps(BASE).encode(), "text/plain"), 400, INVALID, None),
    Case("body-form-encoded", "POST", SPEECH, raw(b"model=m&input=Hi&voice=alice",
                                                  "application/x-www-form-urlencoded"), 400, INVALID, None),
    Case("body-bad-utf8", "POST", SPEECH, raw(b'{"model":"m","voice":"alice","input":"\xff\xfe"}'),
         400, "invalid_request", None),
    Case("body-deeply-nested", "POST", SPEECH, raw(b"[" * 100_000 + b"]" * 100_000), 400, "invalid_request", None),
    Case("body-5MB", "POST", SPEECH, speech(input="a" * (5 * 1024 * 1024)), 400, "input_too_long", "input"),
    # -- accepted: formats match case-insensitively, a lone surrogate inside text is dropped ----
    Case("format-WAV-accepted", "POST", SPEECH, speech(response_format="WAV"), 200, None),
    Case("format-Mp3-accepted", "POST", SPEECH, speech(response_format="Mp3"), 200, None),
    Case("surrogate-in-text-accepted", "POST", SPEECH, surrogate("input", "Hi \\ud800 there."), 200, None),
    # -- the legacy speech route --------------------------------------------------------------
    Case("legacy-speech-empty-input", "POST", "/audio/speech", speech(input=""), 400, "empty_input", "input"),
    Case("legacy-speech-unknown-voice", "POST", "/audio/speech", speech(voice="nobody"), 400, "voice_not_found",
         "voice"),
    Case("legacy-speech-bad-format", "POST", "/audio/speech", speech(response_format="ogg"), 400, INVALID,
         "response_format"),
    # -- voices: upload -----------------------------------------------------------------------
    Case("upload-no-name", "POST", VOICES, upload(name=DROP), 400, INVALID, "name"),
    Case("upload-empty-name", "POST", VOICES, upload(name=""), 400, INVALID, "name"),
    Case("upload-name-traversal", "POST", VOICES, upload(name="../x"), 400, "invalid_upload", "name"),
    Case("upload-name-slash", "POST", VOICES, upload(name="a/b"), 400, "invalid_upload", "name"),
    Case("upload-name-300-chars", "POST", VOICES, upload(name="a" * 300), 400, "invalid_upload", "name"),
    Case("upload-name-hidden", "POST", VOICES, upload(name=".hidden"), 400, "invalid_upload", "name"),
    Case("upload-name-nul", "POST", VOICES, upload(name="x\x00y"), 400, "invalid_upload", "name"),
    Case("upload-name-preset", "POST", VOICES, upload(name="alice"), 409, "voice_exists", "name"),
    Case("upload-name-taken", "POST", VOICES, upload(name="taken"), 409, "voice_exists", "name"),
    Case("upload-no-file", "POST", VOICES, upload(files=[]), 400, "invalid_upload", "audio_sample"),
    Case("upload-file-under-other-field", "POST", VOICES, upload(files=[("other", ("a.wav", WAV, "audio/wav"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-not-audio", "POST", VOICES, upload(files=[("audio_sample", ("a.txt", b"hello " * 100,
                                                                               "text/plain"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-empty-file", "POST", VOICES, upload(files=[("audio_sample", ("a.wav", b"", "audio/wav"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-header-only", "POST", VOICES, upload(files=[("audio_sample", ("a.wav", WAV[:44], "audio/wav"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-1000-channels", "POST", VOICES, upload(files=[("audio_sample", ("a.wav", wav_header(1000),
                                                                                   "audio/wav"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-1-hz", "POST", VOICES, upload(files=[("audio_sample", ("a.wav", wav_header(1, rate=1),
                                                                          "audio/wav"))]),
         400, "invalid_upload", "audio_sample"),
    Case("upload-9-files", "POST", VOICES, upload(files=one("a.wav") * 9), 400, "invalid_upload", "audio_sample"),
    Case("upload-50-parts", "POST", VOICES, upload(files=[("audio_sample", ("a.wav", b"x", "audio/wav"))] * 50),
         400, "invalid_upload", None),
    Case("upload-file-too-large", "POST", VOICES,
         upload(files=[("audio_sample", ("big.wav", b"0" * (MAX_UPLOAD_BYTES + 1), "audio/wav"))]),
         413, "file_too_large", "audio_sample"),
    Case("upload-declared-too-large", "POST", VOICES,
         raw(b"--b\r\n", "multipart/form-data; boundary=b"), 413, "file_too_large", "audio_sample",
         headers={"content-length": str(10**10)}),
    Case("upload-json", "POST", VOICES, {"json": {"name": "x"}}, 400, "invalid_upload", None),
    Case("upload-no-boundary", "POST", VOICES, raw(b"garbage", "multipart/form-data"), 400, "invalid_upload", None),
    # -- voices: delete, wrong methods ----------------------------------------------------------
    Case("delete-unknown", "DELETE", VOICES + "/nobody", {}, 404, "voice_not_found", "voice_id"),
    Case("delete-preset", "DELETE", VOICES + "/alice", {}, 400, "invalid_voice", "voice_id"),
    Case("delete-bad-name", "DELETE", VOICES + "/a%20b", {}, 400, "invalid_voice", "voice_id"),
    Case("delete-300-chars", "DELETE", VOICES + "/" + "a" * 300, {}, 400, "invalid_voice", "voice_id"),
    Case("delete-traversal", "DELETE", VOICES + "/..%2F..%2Fetc", {}, 404, "not_found", None),
    Case("delete-collection", "DELETE", VOICES, {}, 405, "method_not_allowed", None),
    Case("get-one-voice", "GET", VOICES + "/alice", {}, 405, "method_not_allowed", None),
    Case("put-voices", "PUT", VOICES, {}, 405, "method_not_allowed", None),
    # -- the original routes --------------------------------------------------------------------
    Case("tts_url-traversal", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["../../etc/passwd"]}},
         400, "invalid_path", "audio_paths"),
    Case("tts_url-absolute-outside", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["/etc/passwd"]}},
         400, "invalid_path", "audio_paths"),
    Case("tts_url-absolute-inside-missing", "POST", "/tts_url",
         lambda voices: {"json": {"text": "Hi.", "audio_paths": [str(voices / "missing.wav")]}},
         404, "invalid_path", "audio_paths"),
    Case("tts_url-missing", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["missing.wav"]}},
         404, "invalid_path", "audio_paths"),
    Case("tts_url-directory", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["uploads"]}},
         404, "invalid_path", "audio_paths"),
    Case("tts_url-not-audio", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["speaker.json"]}},
         400, "invalid_audio", "audio_paths"),
    Case("tts_url-empty-list", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": []}},
         400, INVALID, "audio_paths"),
    Case("tts_url-empty-path", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": [""]}},
         400, "invalid_path", "audio_paths"),
    Case("tts_url-nul-path", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["ref_a.wav\x00.txt"]}},
         400, "invalid_path", "audio_paths"),
    Case("tts_url-9-paths", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["ref_a.wav"] * 9}},
         400, "invalid_path", "audio_paths"),
    Case("tts_url-empty-text", "POST", "/tts_url", {"json": {"text": "", "audio_paths": ["ref_a.wav"]}},
         400, "empty_input", "text"),
    Case("tts_url-negative-seed", "POST", "/tts_url", {"json": {"text": "Hi.", "audio_paths": ["ref_a.wav"],
                                                                "seed": -1}}, 400, INVALID, "seed"),
    Case("tts-unknown-character", "POST", "/tts", {"json": {"text": "Hi.", "character": "nobody"}},
         404, "voice_not_found", "character"),
    Case("tts-bad-character", "POST", "/tts", {"json": {"text": "Hi.", "character": "../x"}},
         400, "invalid_voice", "character"),
    Case("tts-missing-character", "POST", "/tts", {"json": {"text": "Hi."}}, 400, INVALID, "character"),
    Case("tts-nothing-to-speak", "POST", "/tts", {"json": {"text": "!!!", "character": "alice"}},
         400, NOTHING, "text"),
    # -- the streaming variant's routes -------------------------------------------------------
    *[case for route, name in (("/index-tts/v1/tts_stream", "tts_stream"), ("/index-tts/v1/tts", "tts_wav"))
      for case in (
        Case(f"{name}-missing-reference", "POST", route, {"json": {"text": "Hi."}}, 400, INVALID, "reference_id"),
        Case(f"{name}-unknown-reference", "POST", route, {"json": {"text": "Hi.", "reference_id": "nobody"}},
             404, "voice_not_found", "reference_id"),
        Case(f"{name}-bad-reference", "POST", route, {"json": {"text": "Hi.", "reference_id": "../x"}},
             400, "invalid_voice", "reference_id"),
        Case(f"{name}-empty-text", "POST", route, {"json": {"text": "", "reference_id": "alice"}},
             400, "empty_input", "text"),
        Case(f"{name}-nothing-to-speak", "POST", route, {"json": {"text": "\u200b!!", "reference_id": "alice"}},
             400, NOTHING, "text"),
        Case(f"{name}-text-too-long", "POST", route, {"json": {"text": "a" * 4097, "reference_id": "alice"}},
             400, "input_too_long", "text"),
    )],
    Case("tts_stream-streaming-not-bool", "POST", "/index-tts/v1/tts_stream",
         {"json": {"text": "Hi.", "reference_id": "alice", "streaming": "maybe"}}, 400, INVALID, "streaming"),
    # -- unknown routes, wrong methods, foreign origins ------------------------------------------
    Case("route-unknown", "GET", "/v1/nothing", {}, 404, "not_found", None),
    Case("route-unknown-post", "POST", "/v1/audio/transcriptions", speech(), 404, "not_found", None),
    Case("route-root", "GET", "/", {}, 404, "not_found", None),
    Case("speech-get", "GET", SPEECH, {}, 405, "method_not_allowed", None),
    Case("speech-delete", "DELETE", SPEECH, {}, 405, "method_not_allowed", None),
    Case("tts-get", "GET", "/tts", {}, 405, "method_not_allowed", None),
    Case("health-post", "POST", "/health", {}, 405, "method_not_allowed", None),
    Case("models-post", "POST", "/v1/models", {}, 405, "method_not_allowed", None),
    Case("speech-foreign-origin", "POST", SPEECH, speech(), 403, "cross_origin_refused", None,
         headers={"origin": "https://evil.example"}),
    Case("upload-foreign-origin", "POST", VOICES, upload(name="evil"), 403, "cross_origin_refused", None,
         headers={"origin": "https://evil.example"}),
]


@pytest.fixture(scope="module")
def catalogue_app(tiny_app):
    """tiny_app with one uploaded voice, `taken` (for the duplicate-name case)."""
    url, voices = tiny_app
    r = requests.post(f"{url}{VOICES}", data={"name": "taken"}, files=one("t.wav"), timeout=60)
    assert r.status_code == 200, r.text
    yield url, voices
    requests.delete(f"{url}{VOICES}/taken", timeout=60)


def _sent_strings(value) -> list[str]:
    """The strings a request carried: an answer may quote the client's own input back."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _sent_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _sent_strings(v)]
    return []


def assert_no_leak(text: str, voices: Path, sent: list[str]) -> None:
    for s in sorted(sent, key=len, reverse=True):
        if len(s) > 1:
            text = text.replace(s, "")
    assert str(voices) not in text
    assert not LEAKS.search(text), LEAKS.search(text).group(0)


def _declaring_request(method: str, url: str, timeout: float, data: bytes, headers: dict) -> requests.Response:
    """A request whose Content-Length header is sent as given, whatever the body's size (requests
    would correct it), read back into a `requests.Response`."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, parts.path)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(data)
        answer = conn.getresponse()
        r = requests.Response()
        r.status_code, r._content = answer.status, answer.read()
        r.headers = CaseInsensitiveDict(answer.getheaders())
        return r
    finally:
        conn.close()


def test_the_catalogue_has_at_least_80_cases_with_unique_ids():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request(catalogue_app, case: Case):
    url, voices = catalogue_app
    kwargs = dict(case.kwargs(voices) if callable(case.kwargs) else case.kwargs)
    kwargs["headers"] = {**kwargs.get("headers", {}), **case.headers}
    send = _declaring_request if "content-length" in case.headers else requests.request
    r = send(case.method, url + case.route, timeout=120, **kwargs)
    assert r.status_code == case.status, r.text[:500]
    if case.code is None:                              # accepted: audio, no envelope
        assert r.headers["content-type"].startswith("audio/") and len(r.content) > 44
        return
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["code"] == case.code, err
    assert err["type"] == ("invalid_request_error" if case.status < 500 else "server_error")
    assert isinstance(err["message"], str) and err["message"]
    if case.param is not DROP:
        assert err["param"] == case.param, err
    assert_no_leak(r.text, voices, _sent_strings(kwargs.get("json")) + _sent_strings(kwargs.get("data")))


def test_an_uploaded_file_name_never_becomes_a_path(catalogue_app):
    """A hostile file name is stored under the voice's own directory, flattened; the voice works."""
    url, voices = catalogue_app
    r = requests.post(f"{url}{VOICES}", data={"name": "flat"}, files=one("../../../etc/passwd"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["files"] == ["uploads/flat/01-passwd"]
    assert (voices / "uploads" / "flat" / "01-passwd").is_file()
    assert requests.delete(f"{url}{VOICES}/flat", timeout=60).json()["deleted"] is True
    r = requests.delete(f"{url}{VOICES}/flat", timeout=60)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "voice_not_found")


def test_refused_uploads_stored_nothing(catalogue_app):
    url, voices = catalogue_app
    names = {v["id"] for v in requests.get(f"{url}{VOICES}", timeout=60).json()["data"]}
    assert {"alice", "bob", "taken"} <= names and not names & {"newvoice", "evil", "x", "a", "hidden"}
    assert not [p.name for p in (voices / "uploads").iterdir() if p.name.startswith(".")]   # no temporary left
