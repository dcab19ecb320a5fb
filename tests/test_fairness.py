"""Fairness in one CPU process (issue 20): a short request is not queued behind long ones. Text
normalisation, decode steps and vocoder calls take turns by deadline (indextts.scheduling), so a
short request's first audio goes ahead of long requests' later audio and of the rest of their
normalisation. Ratios measured in one run, on the tiny checkpoint, against the same short request
alone: while four long requests generate, and while they are still being normalised (where the
long requests' transducer calls hold the GIL for their whole duration)."""

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
STEADY_BOUND = 2.0         # the target, while the long requests generate
NORMALISING_BOUND = 4.0    # while they are normalised in this same process (the target is not met there)


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


def test_a_short_request_beside_four_long_ones(tts):
    voice = tts.voice(TINY / "ref_a.wav")

    async def run():
        await _latency(tts, voice, SHORT)                          # warm caches (voice, kernels)
        alone = statistics.median([await _latency(tts, voice, SHORT) for _ in range(3)])
        started = [asyncio.Event() for _ in range(4)]
        longs = [asyncio.ensure_future(_latency(tts, voice, LONG, event)) for event in started]
        try:
            await asyncio.sleep(0.2)
            normalising = await _latency(tts, voice, SHORT)        # the long texts are being normalised
            for event in started:
                await asyncio.wait_for(event.wait(), 120)          # now every long one is generating
            steady = []
            for _ in range(3):
                steady.append(await _latency(tts, voice, SHORT))
            running = sum(not task.done() for task in longs)
        finally:
            for task in longs:
                task.cancel()
            await asyncio.gather(*longs, return_exceptions=True)
        return alone, normalising, steady, running

    alone, normalising, steady, running = tts.run(run())
    assert running == 4, "the long requests ended before the measurement did; make them longer"
    ratio = statistics.median(steady) / alone
    print(f"short alone {alone:.3f} s; beside four generating long ones {[round(s, 3) for s in steady]} s "
          f"(ratio {ratio:.2f}); while they are normalised {normalising:.3f} s (ratio {normalising / alone:.2f})")
    assert ratio <= STEADY_BOUND, (alone, steady)
    assert normalising / alone <= NORMALISING_BOUND, (alone, normalising)
