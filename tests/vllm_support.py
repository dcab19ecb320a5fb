"""Shared pieces of the vLLM engine tests: one event loop and one engine per test session.

vLLM's `AsyncLLM` binds its output task to the event loop it first runs in, so every coroutine
runs on one long-lived loop in a background thread (`Loop.run`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from indextts.gpt.generation import result_from_raw
from indextts.types import CodeChunk, SamplingOptions

TINY = Path(__file__).parent / "golden" / "tiny"
STOP = 8193
LATENT_ATOL = 1e-4
RUNS = [(i, r, p) for i in range(3) for r in ("ref_a", "ref_b") for p in ("rp1", "rp10")]


class Loop:
    """An event loop in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_engine(loop: Loop, **kwargs):
    from indextts.vllm.engine import VLLMEngine

    async def create():      # on the loop's thread, where the engine will be used
        return VLLMEngine.create(TINY, **kwargs)
    started = time.perf_counter()
    engine = loop.run(create(), timeout=600)
    print(f"\nvLLM engine start-up: {time.perf_counter() - started:.1f} s")
    return engine


def stop_engine(loop: Loop, engine):
    async def stop():        # on the loop's thread, so that vLLM's output task is not mid-read
        engine.shutdown()
    loop.run(stop())


async def collect(engine, voice, ids, options):
    """(raw codes with the stop code when it came, the segment's chunk) of one request, by the
    steps `engine.generate` takes (test_generate_is_its_parts_and_runs_to_max_codes_on_request
    holds them equal)."""
    prompt = engine.prompt(voice, ids)
    raw = await engine.raw_codes(prompt, options)
    result = result_from_raw(engine.config, raw)
    latents = await engine.latents(prompt, result.codes.tolist())
    return raw, CodeChunk(result.codes, latents, final=True, stopped=result.stopped)


def greedy(rp: str, **kw) -> SamplingOptions:
    return SamplingOptions.deterministic(repetition_penalty=1.0 if rp == "rp1" else 10.0, max_codes=60, **kw)
