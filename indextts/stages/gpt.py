"""The GPT stage over an engine: conditioning latents per voice, then the engine's code chunks.

Both engines (PyTorch, vLLM) are driven the same way; an engine is any object with

    generate(cond [1, 32, D], segment, options, *, ignore_stop=False, schedule=None) -> AsyncIterator[CodeChunk]
    warm_up(), check_health()          (coroutines)

`ignore_stop` treats the stop code as an ordinary code, so a request runs to `max_codes`:
random-weight checkpoints rarely emit it (benchmarks and tests pass it; the stage never does).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Optional

from indextts.errors import OptionsError
from indextts.stages.base import GPTStage
from indextts.stages.conditioning import VoiceConditioner
from indextts.types import ChunkSchedule, CodeChunk, SamplingOptions, Segment, VoiceSpec


def check_segment_options(cfg, segment: Segment, options: SamplingOptions) -> None:
    """Reject what would overflow the checkpoint's position tables."""
    if not segment.ids:
        raise OptionsError("a segment needs at least one text token")
    if len(segment.ids) > cfg.max_text_tokens:
        raise OptionsError(f"a segment of {len(segment.ids)} text tokens exceeds this checkpoint's "
                           f"max_text_tokens ({cfg.max_text_tokens}); lower max_tokens_per_segment")
    if options.max_codes is not None and options.max_codes > cfg.max_mel_tokens:
        raise OptionsError(f"max_codes {options.max_codes} exceeds this checkpoint's max_mel_tokens "
                           f"({cfg.max_mel_tokens})")


class EngineGPTStage(GPTStage):
    """`GPTStage` over a code engine and a voice conditioner (conditioning runs in a thread)."""

    def __init__(self, engine, conditioning: VoiceConditioner, cfg):
        self.engine = engine
        self.conditioning = conditioning
        self.cfg = cfg              # GPTConfig: the limits requests are checked against
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="conditioning")
        self._warm_up: Optional[asyncio.Future] = None

    async def warm_up(self) -> None:
        """The engine's warm-up, once; later calls wait for the first. A warm-up that failed or
        was cancelled is run again by the next call, not kept."""
        failed = self._warm_up is not None and self._warm_up.done() and (
            self._warm_up.cancelled() or self._warm_up.exception() is not None)
        if self._warm_up is None or failed:
            self._warm_up = asyncio.ensure_future(self.engine.warm_up())
        await asyncio.shield(self._warm_up)

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        check_segment_options(self.cfg, segment, options)
        await self.warm_up()
        loop = asyncio.get_running_loop()
        cond = await loop.run_in_executor(self._executor, self.conditioning, voice)
        chunks = self.engine.generate(cond, segment, options, schedule=schedule)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()      # aborts the engine request if the consumer left early

    async def check_health(self) -> None:
        await self.engine.check_health()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
