"""Failures: a replica that dies mid-request, a stage with no live replica, a GPT stream cut short,
a request past its timeout.

First the ingress's stage clients (serve_app.clients) over fake handles that lose a replica on
cue (no Ray cluster); then the graph over the fake stages in the session's Serve instance, with
two GPT and two vocoder replicas, whose replicas are killed under load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import requests
import torch
from fastapi.testclient import TestClient

from indextts.errors import IncompleteSegmentError, TextError
from indextts.synthesis import Synthesizer
from indextts.types import SamplingOptions, VoiceSpec
from indextts.voices import VoiceRegistry
from serve_app.api import SpeechService, build_api
from test_api import HOP, FakeFrontend, FakeGPT, FakeVocoder, voices_dir  # noqa: F401 (fixture)

ray = pytest.importorskip("ray")
from ray.exceptions import ActorDiedError  # noqa: E402
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError  # noqa: E402

import serve_app.clients as clients  # noqa: E402
from serve_app.clients import FrontendClient, GPTClient, VocoderClient  # noqa: E402
from serve_app.errors import RETRY_AFTER_S, StageUnavailableError, error_response  # noqa: E402
from serve_app.ingress import RequestTimeout  # noqa: E402

from conftest import serve_voices_dir  # noqa: E402

TEXT = "Hello world. Bye now."
RESTART_HOLD_LIMIT_S = 120.0     # the longest a GPT replica of the Serve tests waits to start
VOICE = VoiceSpec((str(Path(__file__).parent / "golden" / "tiny" / "ref_a.wav"),))


# -- fake handles: `handle.method.remote(...)` over a local stage, losing the replica on cue -----

class _Response:
    """A unary DeploymentResponse: awaitable, cancellable."""

    def __init__(self, coro):
        self.coro, self.cancelled = coro, False

    def __await__(self):
        return self.coro.__await__()

    def cancel(self):
        self.cancelled = True


class _Stream(_Response):
    """A streaming DeploymentResponseGenerator."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.coro.__anext__()


class FakeHandle:
    """A DeploymentHandle over `stage`: the first `deaths` calls of `dying` raise ActorDiedError
    (a stream after `after` chunks); `live=False`: the availability probe finds no replica."""

    def __init__(self, stage, dying: str = "", deaths: int = 0, after: int = 0, live: bool = True,
                 error: Exception = ActorDiedError()):
        self.stage, self.dying, self.deaths, self.after = stage, dying, deaths, after
        self.live, self.error = live, error
        self.calls: list[str] = []

    def options(self, **_):
        return self

    def __getattr__(self, method: str):
        handle = self

        class Method:
            def remote(self, *args):
                handle.calls.append(method)
                dies = method == handle.dying and handle.calls.count(method) <= handle.deaths
                if method == "generate":
                    return _Stream(handle._stream(args, dies))
                return _Response(handle._call(method, args, dies))
        return Method()

    async def _call(self, method, args, dies):
        if dies:
            raise self.error
        return await getattr(self.stage, method)(*args)

    async def _stream(self, args, dies):
        n = 0
        async for chunk in self.stage.generate(*args):
            if dies and n == self.after:
                raise self.error
            n += 1
            yield chunk

    def broadcast(self, method: str):
        live = self.live

        class Broadcast:
            async def results_async(self, **_):
                if not live:
                    raise DeploymentUnavailableError("GPT")
                return [None]
        return Broadcast()


def synthesize(gpt_handle=None, vocoder_handle=None, options=SamplingOptions(), text=TEXT) -> torch.Tensor:
    """The utterance through the clients over fake handles (each stage a fresh fake by default)."""
    synth = Synthesizer(FrontendClient(FakeHandle(FakeFrontend())), GPTClient(gpt_handle or FakeHandle(FakeGPT())),
                        VocoderClient(vocoder_handle or FakeHandle(FakeVocoder())))
    return asyncio.run(synth.synthesize(text, VOICE, options))


@pytest.fixture(scope="module")
def expected() -> torch.Tensor:
    return synthesize()


# -- retries in the clients -------------------------------------------------------------------

def test_a_vocoder_call_whose_replica_died_is_made_once_more(expected):
    plain, handle = FakeHandle(FakeVocoder()), FakeHandle(FakeVocoder(), dying="vocode", deaths=1)
    assert torch.equal(synthesize(vocoder_handle=plain), expected)
    assert torch.equal(synthesize(vocoder_handle=handle), expected)
    assert handle.calls.count("vocode") == plain.calls.count("vocode") + 1
    with pytest.raises(StageUnavailableError, match="Vocoder stage is unavailable"):
        synthesize(vocoder_handle=FakeHandle(FakeVocoder(), dying="vocode", deaths=99))   # once more only


def test_a_segment_lost_before_its_first_chunk_is_generated_again_whatever_its_options(expected):
    handle = FakeHandle(FakeGPT(), dying="generate", deaths=1, after=0)
    assert torch.equal(synthesize(handle), expected)       # sampled, unseeded: nothing was delivered yet
    assert handle.calls.count("generate") == 3


@pytest.mark.parametrize("options", [SamplingOptions.deterministic(), SamplingOptions(seed=7)],
                         ids=["greedy", "seeded"])
def test_a_segment_lost_mid_stream_is_regenerated_and_the_delivered_codes_skipped(options):
    whole = synthesize(options=options)
    gpt = FakeGPT()
    handle = FakeHandle(gpt, dying="generate", deaths=1, after=2)
    assert torch.equal(synthesize(handle, options=options), whole)      # no code twice, none missing
    assert sorted(segment.text for _, segment, _ in gpt.calls) == ["Bye now", "Hello world", "Hello world"]


def test_a_sampled_segment_lost_mid_stream_cannot_be_repeated():
    handle = FakeHandle(FakeGPT(), dying="generate", deaths=1, after=2)
    with pytest.raises(StageUnavailableError, match="cannot be generated again"):
        synthesize(handle, text="Hello world")
    assert handle.calls.count("generate") == 1


def test_a_regeneration_with_other_codes_is_refused():
    class Drifting(FakeGPT):
        runs = 0

        async def generate(self, voice, segment, options=SamplingOptions(), schedule=None):
            self.runs += 1
            async for chunk in super().generate(voice, segment, options, schedule):
                if self.runs > 1:
                    chunk.codes[:] += 1
                yield chunk

    handle = FakeHandle(Drifting(), dying="generate", deaths=1, after=2)
    with pytest.raises(RuntimeError, match="differs"):
        synthesize(handle, options=SamplingOptions.deterministic(), text="Hello world")


def test_errors_of_the_request_itself_are_not_repeated():
    gpt = FakeHandle(FakeGPT())
    with pytest.raises(RuntimeError, match="CUDA error"):         # raised by the stage: its own error
        synthesize(gpt, text="crash now.")
    assert gpt.calls == ["generate"]
    frontend = FakeHandle(FakeFrontend())
    synth = Synthesizer(FrontendClient(frontend), GPTClient(FakeHandle(FakeGPT())), VocoderClient(FakeHandle(
        FakeVocoder())))
    with pytest.raises(TextError):
        asyncio.run(synth.synthesize("boom-text", VOICE))
    assert frontend.calls == ["process"]


def test_serve_refusals_become_503_envelopes_with_retry_after():
    handle = FakeHandle(FakeVocoder(), dying="vocode", deaths=5, error=BackPressureError(
        num_queued_requests=256, max_queued_requests=256))
    with pytest.raises(StageUnavailableError, match="at capacity") as err:
        synthesize(vocoder_handle=handle, text="Hello world")
    assert handle.calls.count("vocode") == 1                       # back-pressure is not a dead replica
    response = error_response(err.value)
    assert response.status_code == 503 and response.headers["retry-after"] == str(RETRY_AFTER_S)
    body = json.loads(response.body)["error"]
    assert (body["code"], body["type"]) == ("service_unavailable", "server_error")


def test_an_unanswered_call_gives_up_once_the_stage_has_no_live_replica(monkeypatch):
    monkeypatch.setattr(clients, "PROBE_AFTER_S", 0.05)

    class Stuck(FakeVocoder):
        async def vocode(self, voice, window):
            await asyncio.sleep(0.5)     # queued in Serve for a replica
            return await super().vocode(voice, window)

    start = time.perf_counter()
    with pytest.raises(StageUnavailableError, match="no replica of the Vocoder stage"):
        synthesize(vocoder_handle=FakeHandle(Stuck(), live=False))
    assert time.perf_counter() - start < 0.4
    assert synthesize(vocoder_handle=FakeHandle(Stuck(), live=True)).numel() > 0   # slow but served: waits


# -- a segment cut short; the request timeout (the API without Serve) ----------------------------

class CutGPT(FakeGPT):
    """FakeGPT whose segments starting with "cut" end after their first chunk, without a final one."""

    async def generate(self, voice, segment, options=SamplingOptions(), schedule=None):
        chunks = super().generate(voice, segment, options, schedule)
        try:
            async for chunk in chunks:
                if segment.text.startswith("cut") and chunk.start > 0:
                    return
                yield chunk
        finally:
            await chunks.aclose()


def test_a_gpt_stream_without_its_final_chunk_is_an_error():
    handle = FakeHandle(CutGPT())
    with pytest.raises(IncompleteSegmentError, match="before its last chunk"):
        synthesize(handle, text="Fine. cut this short.")


def _client(voices_dir, gpt, timeout_s=None) -> TestClient:
    service = SpeechService(Synthesizer(FakeFrontend(), gpt, FakeVocoder(), lookahead=2), VoiceRegistry(voices_dir))
    app = build_api(service)
    if timeout_s:
        app.add_middleware(RequestTimeout, timeout_s=timeout_s)
    return TestClient(app, raise_server_exceptions=False)


def test_an_sse_stream_cut_short_ends_with_an_error_event(voices_dir):
    r = _client(voices_dir, CutGPT()).post("/v1/audio/speech", json={
        "model": "m", "input": "Fine. cut this short.", "voice": "alice", "stream_format": "sse"})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and "speech.audio.done" not in r.text


def test_a_request_past_its_timeout_gets_a_504_envelope(voices_dir):
    client = _client(voices_dir, FakeGPT(delay=0.2), timeout_s=0.3)
    start = time.perf_counter()
    r = client.post("/v1/audio/speech", json={"model": "m", "input": "A long sentence here.", "voice": "alice"})
    assert r.status_code == 504 and time.perf_counter() - start < 2
    assert r.json()["error"]["code"] == "request_timeout" and r.json()["error"]["type"] == "server_error"
    fast = _client(voices_dir, FakeGPT(), timeout_s=5)
    assert fast.post("/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alice"}).status_code == 200


# -- over real Serve: two GPT and two vocoder replicas, killed under load ----------------------

@dataclass(frozen=True)
class HeldStart:
    """Builds a replica's CutGPT; while the file `hold` exists a replica starting waits (at most
    RESTART_HOLD_LIMIT_S): a stage whose replicas cannot come back, as while weights load."""

    hold: str
    log: str

    def __call__(self):
        deadline = time.monotonic() + RESTART_HOLD_LIMIT_S
        while os.path.exists(self.hold) and time.monotonic() < deadline:
            time.sleep(0.05)
        return CutGPT(delay=0.05, log=self.log)


@pytest.fixture(scope="module")
def reliable_app(serve_url, tmp_path_factory, tiny_dir):
    from ray import serve

    from serve_app.app import build_graph
    from serve_app.config import AppArgs
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the fakes travel to the replicas
    root = tmp_path_factory.mktemp("reliability")
    hold, log, batches = root / "hold", root / "gpt.log", root / "vocoder.log"
    args = AppArgs(model_dir="unused", device="cpu", voices_dir=str(serve_voices_dir(root / "voices", tiny_dir)),
                   check_model_dir=False)
    fast = {"num_replicas": 2, "health_check_period_s": 1, "graceful_shutdown_timeout_s": 1}
    app = build_graph(args, FakeFrontend, HeldStart(str(hold), str(log)),
                      functools.partial(FakeVocoder, log=str(batches)), overrides={"GPT": fast, "Vocoder": fast})
    serve.run(app, name="reliability", route_prefix="/reliability")
    yield f"{serve_url}/reliability", hold, log, batches
    hold.unlink(missing_ok=True)
    serve.delete("reliability")


def _replicas(deployment: str) -> list:
    """The live replica actors of one deployment of the app."""
    found = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith(f"SERVE_REPLICA::reliability#{deployment}#"):
            try:
                found.append(ray.get_actor(a["name"], namespace=a["namespace"]))
            except ValueError:       # gone since it was listed
                pass
    return found


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _body(i: int) -> dict:
    """Four distinct requests; greedy or seeded, so a segment lost mid-stream can be regenerated."""
    extra = {"temperature": 0} if i % 2 else {"seed": i % 4}
    return {"model": "m", "input": f"Alpha beta gamma {i % 4}. Delta epsilon zeta eta.", "voice": "alice",
            "response_format": "pcm", **extra}


def _under_load(url: str, log: Path, deployment: str, due: Callable[[list[str]], bool]) -> list[requests.Response]:
    """16 concurrent requests; one replica of `deployment` is killed once the lines added to `log`
    are `due` (the work then in flight on it is lost)."""
    before = len(_lines(log))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(requests.post, f"{url}/v1/audio/speech", json=_body(i), timeout=60) for i in range(16)]
        deadline = time.time() + 30
        while not due(_lines(log)[before:]) and time.time() < deadline:
            time.sleep(0.01)
        ray.kill(_replicas(deployment)[0], no_restart=False)
        return [f.result() for f in futures]


def _alone(url: str) -> list[bytes]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [r.content for r in pool.map(lambda i: requests.post(f"{url}/v1/audio/speech", json=_body(i),
                                                                    timeout=60), range(4))]


def test_killing_a_gpt_replica_under_load_fails_no_request(reliable_app):
    url, _, log, _ = reliable_app
    alone = _alone(url)
    for i, audio in enumerate(alone):
        assert len(audio) == 2 * HOP * (len(f"Alpha beta gamma {i}") + len("Delta epsilon zeta eta"))
    starts = sum('"start"' in line for line in _lines(log))
    # Killed when the first segment is done: the others are mid-segment, some not started.
    results = _under_load(url, log, "GPT", lambda added: any('"done"' in line for line in added))
    assert [r.status_code for r in results] == [200] * 16
    assert [r.content for r in results] == [alone[i % 4] for i in range(16)]     # same audio, nothing lost
    # More than the 32 segments' generations: those lost with the replica were generated again.
    assert sum('"start"' in line for line in _lines(log)) - starts > 2 * 16


def test_killing_a_vocoder_replica_under_load_fails_no_request(reliable_app):
    url, _, _, batches = reliable_app
    alone = _alone(url)
    results = _under_load(url, batches, "Vocoder", lambda added: len(added) >= 4)
    assert [r.status_code for r in results] == [200] * 16
    assert [r.content for r in results] == [alone[i % 4] for i in range(16)]


def test_a_segment_cut_short_aborts_the_http_stream(reliable_app):
    """Through Serve's proxy: the status and first audio are sent, then the connection closes
    without the chunked body's end, so the client cannot take the audio for complete."""
    url = reliable_app[0]
    body = {"model": "m", "input": "Fine. cut this short.", "voice": "alice", "response_format": "wav"}
    with requests.post(f"{url}/v1/audio/speech", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(r.iter_content(chunk_size=None))
    r = requests.post(f"{url}/v1/audio/speech", json={**body, "stream_format": "sse"}, timeout=60)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "model_error"


def test_with_no_live_gpt_replica_a_request_gets_a_prompt_503(reliable_app):
    """The replicas are killed and their replacements cannot start. The GPT call is not answered
    within the clients' PROBE_AFTER_S, so they ask Serve's router, which knows no live replica:
    503 at once, where Serve would queue the call until a replica starts."""
    url, hold, _, _ = reliable_app
    hold.touch()
    try:
        for replica in _replicas("GPT"):
            ray.kill(replica, no_restart=True)
        for _ in range(2):
            start = time.perf_counter()
            r = requests.post(f"{url}/v1/audio/speech", json=_body(0), timeout=60)
            assert time.perf_counter() - start < 15
            assert r.status_code == 503 and int(r.headers["retry-after"]) == RETRY_AFTER_S
            assert r.json()["error"]["code"] == "service_unavailable" and "Traceback" not in r.text
    finally:
        hold.unlink()
    deadline = time.time() + 60                 # replacements start once released: served again
    while requests.post(f"{url}/v1/audio/speech", json=_body(0), timeout=60).status_code != 200:
        assert time.time() < deadline
        time.sleep(0.5)
