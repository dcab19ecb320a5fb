"""Fairness in one CPU process (issue 20): a short request is not queued behind long ones. Text
normalisation, decode steps and vocoder calls take turns by deadline (indextts.scheduling), so a
short request's first audio goes ahead of long requests' later audio and of the rest of their
normalisation. Ratios measured in one run, on the tiny checkpoint, against the same short request
alone (medians of three): while four long requests generate, and while they are still being
normalised (in passes of whole sentences, PASS_CHARS, each holding the GIL)."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from indextts.pipeline import IndexTTS
from indextts.types import SamplingOptions

from conftest import TINY

LONG = ("The quick brown fox jumps over the lazy dog near the river bank, and then it runs home. " * 40)[:3000]
SHORT = "Hello there, how are you today?"
OPTIONS = SamplingOptions(seed=1, max_codes=40)
BOUND = 2.0                # the target: at most twice the short request's latency alone


@pytest.fixture(scope="module")
def tts():
    with IndexTTS.from_pretrained(TINY) as model:
        yield model


async def _latency(tts, voice, text: str, first_audio: asyncio.Event = None) -> float:
    started = time.perf_counter()
    async for _ in tts.synthesizer.stream(text, voice, OPTIONS, 60):
        if first_audio is not None:
            first_audio.set()
    return time.perf_counter() - started


async def _beside_long_ones(tts, voice, generating: bool) -> list[float]:
    """The short request's latency, three times, beside four long requests that are still being
    normalised (started 0.2 s before) or all generating (past their first audio)."""
    started = [asyncio.Event() for _ in range(4)]
    longs = [asyncio.ensure_future(_latency(tts, voice, LONG, event)) for event in started]
    try:
        await asyncio.sleep(0.2)
        if not generating:
            return [await _latency(tts, voice, SHORT)]
        for event in started:
            await asyncio.wait_for(event.wait(), 120)
        times = [await _latency(tts, voice, SHORT) for _ in range(3)]
        assert all(not task.done() for task in longs), "the long requests ended first; make them longer"
        return times
    finally:
        for task in longs:
            task.cancel()
        await asyncio.gather(*longs, return_exceptions=True)


def test_a_short_request_beside_four_long_ones(tts):
    voice = tts.voice(TINY / "ref_a.wav")

    async def run():
        await _latency(tts, voice, SHORT)                          # warm caches (voice, kernels)
        alone = statistics.median([await _latency(tts, voice, SHORT) for _ in range(3)])
        normalising = [(await _beside_long_ones(tts, voice, generating=False))[0] for _ in range(3)]
        steady = await _beside_long_ones(tts, voice, generating=True)
        return alone, normalising, steady

    alone, normalising, steady = tts.run(run())
    print(f"short alone {alone:.3f} s; beside four generating long ones {[round(t, 3) for t in steady]} s "
          f"(ratio {statistics.median(steady) / alone:.2f}); while they are normalised "
          f"{[round(t, 3) for t in normalising]} s (ratio {statistics.median(normalising) / alone:.2f})")
    assert statistics.median(steady) / alone <= BOUND, (alone, steady)
    assert statistics.median(normalising) / alone <= BOUND, (alone, normalising)
