"""The Serve graph with real Ray Serve on CPU, through real HTTP clients (the `openai` SDK,
`requests`). One Ray instance for the session; two applications in it:

- `/tiny`: `build_app` over the tiny checkpoint (torch GPT engine), the real thing on CPU;
- `/fake`: the same graph over the fake stages of test_api.py, to observe cancellation and
  errors raised inside replicas.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import requests

from serve_support import GatedGPTFactory
from test_api import FakeFrontend, FakeGPT, FakeVocoder, decode

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")
from ray import serve  # noqa: E402

from indextts.checkpoint import CheckpointInfo  # noqa: E402
from serve_app.app import build_app, build_graph  # noqa: E402
from serve_app.config import AppArgs, StageFactory  # noqa: E402

from conftest import CODEC_SLACK_S, serve_voices_dir  # noqa: E402

SR = 24000
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]


@pytest.fixture(scope="session")
def gated_app(serve_url, tmp_path_factory, tiny_dir):
    """The real graph on the tiny checkpoint (PyTorch engine, default chunk schedule) whose code
    generation waits at code `HOLD_AT` of each segment until the test opens its gate."""
    root = tmp_path_factory.mktemp("gated")
    gates = root / "gates"
    gates.mkdir()
    limit = CheckpointInfo.from_dir(tiny_dir).config.gpt.max_segment_tokens
    args = AppArgs(model_dir=str(tiny_dir), device="cpu", gpt_engine="torch", max_tokens_per_segment=limit,
                   voices_dir=str(serve_voices_dir(root / "voices", tiny_dir)))
    app = build_graph(args, StageFactory("frontend", args), GatedGPTFactory(args, str(gates), HOLD_AT),
                      StageFactory("vocoder", args), max_tokens_limit=limit)
    serve.run(app, name="gated", route_prefix="/gated")
    return f"{serve_url}/gated", gates


# -- the real graph on the tiny checkpoint ----------------------------------------------------

TEXT = "Hello world. This is a test."


def greedy(sdk, fmt: str, text: str = TEXT, voice: str = "alice", **extra) -> bytes:
    return sdk.audio.speech.create(model="tts-1", voice=voice, input=text, response_format=fmt,
                                   extra_body={"temperature": 0, **extra}).read()


def test_openai_sdk_speech_in_all_six_formats(sdk):
    reference_s = len(greedy(sdk, "pcm")) / 2 / SR
    assert reference_s > 0
    for fmt in FORMATS:
        rate, seconds = decode(greedy(sdk, fmt), fmt)
        assert rate == SR, fmt
        assert abs(seconds - reference_s) <= CODEC_SLACK_S.get(fmt, 0.0) + 1e-6, fmt


def test_openai_sdk_streams_audio_before_the_request_finishes(sdk):
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen."
    arrivals, sizes = [], []
    start = time.perf_counter()
    with sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alice", input=text, response_format="pcm",
            extra_body={"temperature": 0, "max_tokens_per_segment": 8}) as response:
        for chunk in response.iter_bytes():
            arrivals.append(time.perf_counter() - start)
            sizes.append(len(chunk))
    # Segments are sent as they finish: the first bytes come long before the last ones.
    assert len(arrivals) >= 3
    assert arrivals[0] < 0.8 * arrivals[-1]
    assert sizes[0] < 0.5 * sum(sizes) and sum(sizes) % 2 == 0


HOLD_AT = 41          # the default schedule's first chunk (40 codes) is cut when code 41 arrives
# One segment; sampled with this seed the tiny checkpoint generates its full 60 codes, no stop code.
LONG = {"model": "tts-1", "voice": "alice", "input": "Hello world, this is a long test of streaming.",
        "response_format": "pcm", "seed": 1}


def _gate_events(gates: Path, k: int) -> list[str]:
    lines = (gates / "log").read_text().splitlines() if (gates / "log").exists() else []
    return [e["event"] for e in map(json.loads, lines) if e["k"] == k]


def _wait_for(gates: Path, k: int, event: str) -> list[str]:
    deadline = time.time() + 30
    while event not in (events := _gate_events(gates, k)) and time.time() < deadline:
        time.sleep(0.02)
    return events


def test_first_audio_arrives_while_the_segment_is_generating_and_leaving_stops_it(gated_app):
    """First audio comes from the first chunk while the GPT is held mid-segment (it can only go
    on once the client has those bytes); a client that leaves mid-segment stops the generation
    at the next code (the cancellation reaches the engine's code loop)."""
    url, gates = gated_app
    with requests.post(f"{url}/v1/audio/speech", json=LONG, stream=True, timeout=120) as r:
        assert r.status_code == 200
        stream = r.iter_content(chunk_size=None)
        first = next(stream)
        assert first and _gate_events(gates, 1) == ["held"]      # code 42 of 60 not generated yet
        (gates / "1").touch()
        rest = b"".join(stream)
    assert _wait_for(gates, 1, "ended") == ["held", "released", "ended"]
    ended = [json.loads(line) for line in (gates / "log").read_text().splitlines()][-1]
    assert ended == {"event": "ended", "k": 1, "codes": 60}
    assert len(first) + len(rest) == 2 * 1024 * 60                # every code's audio, once

    with requests.post(f"{url}/v1/audio/speech", json=LONG, stream=True, timeout=120) as r:
        assert next(r.iter_content(chunk_size=None)) and _gate_events(gates, 2) == ["held"]
    # the connection is closed mid-segment: the engine's worker learns it while held, and stops
    assert _wait_for(gates, 2, "ended") == ["held", "cancelled", "ended"]
    ended = [e for e in map(json.loads, (gates / "log").read_text().splitlines()) if e["k"] == 2][-1]
    assert ended["codes"] == HOLD_AT + 1                          # the next code after the hold, no more


def test_sse_stream_through_real_serve(tiny_app):
    r = requests.post(f"{tiny_app[0]}/v1/audio/speech", json={
        "model": "tts-1", "voice": "bob", "input": TEXT, "stream_format": "sse", "response_format": "pcm"},
        timeout=120)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}


def test_openai_sdk_lists_uploads_and_deletes_voices(sdk, tiny_app, tiny_dir):
    listed = sdk.get("/audio/voices", cast_to=object)
    assert {v["id"] for v in listed["data"]} >= {"alice", "bob"}
    with open(tiny_dir / "ref_b.wav", "rb") as f:
        voice = sdk.audio.voices.create(name="carol", audio_sample=f, consent="cons_test")
    assert voice.id == "carol" and voice.object == "audio.voice"
    assert "carol" in {v["id"] for v in sdk.get("/audio/voices", cast_to=object)["data"]}
    # The upload holds bob's recording: same conditioning, same greedy audio.
    assert greedy(sdk, "wav", voice="carol") == greedy(sdk, "wav", voice="bob")
    deleted = sdk.audio.voices.delete("carol")
    assert deleted.deleted and deleted.id == "carol"
    with pytest.raises(openai.BadRequestError) as err:
        greedy(sdk, "wav", voice="carol")
    assert err.value.body["param"] == "voice"
    with pytest.raises(openai.NotFoundError):
        sdk.audio.voices.delete("carol")


def test_voice_mixing(sdk):
    mixed = greedy(sdk, "pcm", voice="alice+bob")
    assert mixed and mixed != greedy(sdk, "pcm", voice="alice")


def test_original_routes_answer_as_before(tiny_app):
    url, voices = tiny_app
    r = requests.post(f"{url}/tts_url", json={"text": TEXT, "audio_paths": ["ref_a.wav"]}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == SR and w.getnframes() > 0
    r2 = requests.post(f"{url}/tts_url", json={"text": TEXT, "audio_paths": ["ref_a.wav"]}, timeout=120)
    assert r2.content == r.content                       # seed 8 by default: reproducible
    r = requests.post(f"{url}/tts", json={"text": TEXT, "character": "bob"}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    r = requests.post(f"{url}/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": "alice"}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert requests.get(f"{url}/audio/voices", timeout=30).json() == {"alice": ["ref_a.wav"], "bob": ["ref_b.wav"]}
    assert requests.get(f"{url}/health", timeout=30).json()["status"] == "healthy"
    r = requests.post(f"{url}/tts_url", json={"text": TEXT, "audio_paths": ["../../../../etc/passwd"]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio_paths"


def test_sixteen_concurrent_requests_all_succeed(sdk):
    """Seeded sampling: each concurrent request gets the audio it gets alone (within one int16
    step, for batched vocoder calls), so nothing leaks between requests."""
    def one(i: int) -> bytes:
        return sdk.audio.speech.create(model="tts-1", voice="alice" if i % 2 else "bob", input=f"Number {i}.",
                                       response_format="wav", extra_body={"seed": i}).read()

    def samples(data: bytes) -> np.ndarray:
        with wave.open(io.BytesIO(data)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int32)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for i, data in enumerate(results):
        rate, seconds = decode(data, "wav")
        assert rate == SR and seconds > 0
        if i < 4:
            audio, alone = samples(data), samples(one(i))
            assert len(audio) == len(alone) and np.abs(audio - alone).max() <= 1, i


def test_greedy_speech_equals_indextts_synth_greedy(sdk, tiny_dir, tmp_path):
    expected = synth_greedy(tiny_dir, tmp_path / "synth.wav")
    served = np.frombuffer(greedy(sdk, "pcm", max_tokens_per_segment=40), "<i2")
    assert len(expected) > 0
    np.testing.assert_array_equal(served, expected)
    served_wav = greedy(sdk, "wav", max_tokens_per_segment=40)
    assert served_wav[44:] == expected.astype("<i2").tobytes()


def synth_greedy(tiny_dir: Path, out: Path, *extra: str) -> np.ndarray:
    """`indextts synth --greedy` in a subprocess, threads as in the replicas (same float reductions)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "indextts", "synth", "--model-dir", str(tiny_dir), "--voice",
                           str(tiny_dir / "ref_a.wav"), "--text", TEXT, "--greedy", "--max-text-tokens-per-segment",
                           "40", "--out", str(out), *extra], env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "ERROR" in line]
    assert done.returncode == 0, "\n".join(errors[:40]) + "\n...\n" + done.stderr[-2000:]
    with wave.open(str(out)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def test_vllm_graph_greedy_equals_indextts_synth_greedy_on_vllm(vllm_sdk, tiny_dir, tmp_path):
    expected = synth_greedy(tiny_dir, tmp_path / "synth.wav", "--engine", "vllm", "--gpu-memory-utilization", "0.05")
    served = np.frombuffer(greedy(vllm_sdk, "pcm", max_tokens_per_segment=40), "<i2")
    np.testing.assert_array_equal(served, expected)


def test_vllm_graph_serves_concurrent_requests(vllm_sdk):
    """16 concurrent greedy requests (8 distinct texts x voices, each twice) each get their own
    audio: equal to the same request made alone, within one int16 step (concurrent segments share
    batched vocoder calls, whose float sums may round the last bit differently)."""
    def one(i: int) -> np.ndarray:
        pcm = greedy(vllm_sdk, "pcm", text=f"Number {i % 8}.", voice="alice" if i % 2 else "bob")
        return np.frombuffer(pcm, "<i2").astype(np.int32)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, range(16)))
    alone = [one(i) for i in range(8)]
    for i, audio in enumerate(together):
        ref = alone[i % 8]
        assert len(audio) == len(ref) > 0, i
        assert np.abs(audio - ref).max() <= 1, i
    assert len({a.tobytes() for a in alone}) == 8      # the requests do differ from each other


@pytest.mark.parametrize("body,status,param", [
    ({"voice": "nobody"}, 400, "voice"),
    ({"input": ""}, 400, "input"),
    ({"input": "x" * 5000}, 400, "input"),
    ({"response_format": "ogg"}, 400, "response_format"),
    ({"speed": 9}, 400, "speed"),
])
def test_errors_through_serve_use_the_envelope(tiny_app, body, status, param):
    payload = {"model": "tts-1", "input": TEXT, "voice": "alice", **body}
    r = requests.post(f"{tiny_app[0]}/v1/audio/speech", json=payload, timeout=60)
    assert r.status_code == status
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config_2gpu.yaml"])
def test_serve_config_matches_the_graph_and_its_args(name):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "serve_app.app:build_app"
    args = AppArgs.model_validate(app.args)
    assert args.on_gpu and args.gpt_engine == "vllm"
    graph = build_graph(args.model_copy(update={"check_model_dir": False}), FakeFrontend, FakeGPT, FakeVocoder)
    bound = {d.name for d in _deployments(graph)}
    assert {d.name for d in app.deployments} == bound == {"Ingress", "Frontend", "GPT", "Vocoder"}
    for d in app.deployments:
        assert d.autoscaling_config and d.max_ongoing_requests and d.ray_actor_options
    gpus = {d.name: d.ray_actor_options.num_gpus or 0 for d in app.deployments}
    assert gpus["GPT"] > 0 and gpus["Vocoder"] > 0
    if name == "serve_config.yaml":      # one GPT and two vocoder replicas share a device
        assert gpus["GPT"] + 2 * gpus["Vocoder"] <= 1
    else:                                # the GPT alone on one device, four vocoders on the other
        assert gpus["GPT"] == 1 and 4 * gpus["Vocoder"] <= 1 and args.gpu_memory_utilization > 0.5


def _deployments(app):
    from ray.serve._private.build_app import build_app as flatten
    return flatten(app, name="check").deployments


def test_build_app_without_a_config_file_has_the_config_files_limits(tiny_dir):
    """`serve run serve_app.app:build_app ...` (no config file) runs with the config file's queue
    bounds, back-pressure answer and request timeout."""
    import yaml

    from serve_app.errors import RETRY_AFTER_S
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "serve_config.yaml").read_text())
    bound = {d.name: d for d in _deployments(build_app({"model_dir": str(tiny_dir), "device": "cpu"}))}
    for d in config["applications"][0]["deployments"]:
        for key in ("max_ongoing_requests", "max_queued_requests"):
            assert getattr(bound[d["name"]], key) == d.get(key, -1), (d["name"], key)    # -1: no bound
    ingress = bound["Ingress"]
    assert ingress.init_kwargs["request_timeout_s"] == config["http_options"]["request_timeout_s"]   # held by the ingress
    assert ingress._deployment_config.backpressure_config.retry_after_s == RETRY_AFTER_S


@pytest.mark.parametrize("args,problem", [
    ({"device": "cpu"}, "model_dir"),
    ({"model_dir": "x", "device": "tpu"}, "device"),
    ({"model_dir": "x", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"model_dir": "x", "gpt_engine": "tensorrt"}, "gpt_engine"),
    ({"model_dir": "x", "max_num_seqs": 0}, "max_num_seqs"),
    ({"model_dir": "x", "unknown_option": 1}, "unknown_option"),
    ({"model_dir": "x", "chunk_schedule": "40,0"}, "chunk_schedule"),
    ({"model_dir": "x", "chunk_schedule": "fast"}, "chunk_schedule"),
    ({"model_dir": "x", "vocoder_lookahead": -1}, "vocoder_lookahead"),
])
def test_build_app_rejects_bad_args(args, problem):
    with pytest.raises(ValueError, match=problem):
        build_app(args)


def test_a_mistyped_serve_run_argument_is_one_line_not_a_traceback(tiny_dir):
    serve_cli = Path(sys.executable).parent / "serve"
    done = subprocess.run([str(serve_cli), "run", "serve_app.app:build_app", f"model_dir={tiny_dir}", "devcie=cpu",
                           "gpu_memory_utilization=2"], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    (line,) = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("Error:")]
    assert "devcie: unknown argument" in line and "gpu_memory_utilization:" in line


def test_accelerator_resource_goes_to_the_gpu_stages_only():
    args = AppArgs(model_dir="x", device="cpu", accelerator_resource="tts_accel", gpt_num_gpus=0.5)
    assert args.accelerator_options(0.5) == {"num_cpus": 0.25, "num_gpus": 0, "resources": {"tts_accel": 0.5}}
    assert "resources" not in AppArgs(model_dir="x").accelerator_options(0.5)
    bound = {d.name: d.ray_actor_options for d in _deployments(build_graph(
        args.model_copy(update={"check_model_dir": False}), FakeFrontend, FakeGPT, FakeVocoder))}
    assert bound["GPT"]["resources"] == {"tts_accel": 0.5} and bound["Vocoder"]["resources"] == {"tts_accel": 0.25}
    assert not bound["Frontend"].get("resources") and not bound["Ingress"].get("resources")
    with pytest.raises(ValueError, match="accelerator_resource"):
        AppArgs(model_dir="x", accelerator_resource="bad name")


def test_chunk_schedule_and_lookahead_reach_the_stages():
    """`serve run ... chunk_schedule=8,16 vocoder_lookahead=12` strings become the library's options;
    the default is the library's streaming schedule with the exact (receptive-field) lookahead."""
    from indextts.types import ChunkSchedule
    options = AppArgs.model_validate({"model_dir": "x", "chunk_schedule": " 8, 16 ", "vocoder_lookahead": "12"}
                                     ).stage_options()
    assert options.chunk_schedule == ChunkSchedule((8, 16)) and options.vocoder_lookahead == 12
    default = AppArgs(model_dir="x").stage_options()
    assert default.chunk_schedule == ChunkSchedule.streaming() and default.vocoder_lookahead is None
    assert AppArgs(model_dir="x", chunk_schedule="WHOLE").stage_options().chunk_schedule.is_whole


def test_build_app_checks_the_model_dir(tmp_path):
    from indextts.errors import ModelDirError
    with pytest.raises(ModelDirError, match="config.yaml"):
        build_app({"model_dir": str(tmp_path), "device": "cpu"})
    with pytest.raises(ModelDirError, match="does not exist"):
        build_app({"model_dir": str(tmp_path / "missing"), "device": "cpu"})
    # A hub id is left to the replicas (each downloads into its node's cache), not fetched here.
    assert build_app({"model_dir": "IndexTeam/IndexTTS-1.5"}) is not None


def test_build_app_takes_serve_run_strings(tiny_dir):
    # `serve run serve_app.app:build_app key=value` passes strings; Serve validates into AppArgs.
    args = AppArgs.model_validate({"model_dir": str(tiny_dir), "device": "cpu", "max_num_seqs": "8",
                                   "enforce_eager": "true", "gpu_memory_utilization": "0.2"})
    assert (args.max_num_seqs, args.enforce_eager, args.gpu_memory_utilization) == (8, True, 0.2)
    assert build_app(args) is not None


# -- the fake graph: errors inside replicas, cancellation -------------------------------------

def test_errors_raised_inside_replicas_keep_their_status(fake_app):
    url, _ = fake_app
    post = lambda text, voice="alice": requests.post(f"{url}/v1/audio/speech", timeout=60, json={  # noqa: E731
        "model": "m", "input": text, "voice": voice, "response_format": "pcm"})
    r = post("boom-text")                                 # TextError in the Frontend replica
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert "Traceback" not in r.text and "ray" not in r.json()["error"]["message"].lower()
    r = post("crash now.")                                # RuntimeError in the GPT replica
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert post("Fine.").status_code == 200


def test_client_disconnect_cancels_generation_in_the_gpt_replica(fake_app):
    url, log = fake_app
    # Segment i has 10 * (i + 1) characters: later segments are still generating (in the GPT
    # replica, lookahead 4) when the first one is played.
    text = " ".join(f"{i:02d}" + "x" * (10 * (i + 1) - 2) + "." for i in range(12))
    with requests.post(f"{url}/v1/audio/speech", json={"model": "m", "input": text, "voice": "bob",
                                                       "response_format": "pcm"}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        first = next(r.iter_content(chunk_size=None))
        assert first
    # The response is closed after one segment: segments in flight must be aborted in the GPT replica.
    deadline = time.time() + 20
    events = []
    while time.time() < deadline:
        events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if any(e["event"] == "cancelled" for e in events):
            break
        time.sleep(0.2)
    cancelled = {e["text"][:2] for e in events if e["event"] == "cancelled"}
    assert cancelled, events
    started = {e["text"][:2] for e in events if e["event"] == "start" and e["text"][2:3] == "x"}
    assert len(started) < 12                               # the rest of the text never ran


def test_concurrent_segments_are_vocoded_in_batches(fake_app):
    url, log = fake_app
    batches = log.parent / "vocoder.log"
    before = len(batches.read_text().split()) if batches.exists() else 0

    def one(i: int) -> int:
        return requests.post(f"{url}/v1/audio/speech", timeout=60, json={
            "model": "m", "input": f"Voice {i}.", "voice": "alice", "response_format": "pcm"}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert set(pool.map(one, range(16))) == {200}
    sizes = [int(n) for n in batches.read_text().split()[before:]]
    assert sum(sizes) == 32 and max(sizes) > 1         # two chunks of each request's one segment
