"""Shared fixtures: the golden data of the original implementation (tests/golden/)."""

from __future__ import annotations

import json
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
