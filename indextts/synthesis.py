"""Text -> audio orchestration over the three stages, shared by the pipeline and the Serve ingress.

Segments are independent in IndexTTS (each is conditioned only on the voice), so the GPT stage
works on up to `lookahead` segments at once while earlier ones are vocoded and streamed; audio
still comes out in text order. Cancelling the consumer cancels every in-flight stage call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator, Optional

import torch

from indextts.stages import FrontendStage, GPTStage, VocoderStage, VoiceSpec
from indextts.types import AudioChunk, CodeChunk, FrontendResult, SamplingOptions, Segment

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
DEFAULT_MAX_TOKENS_PER_SEGMENT = 120


@dataclass(frozen=True)
class SegmentCodes:
    codes: torch.Tensor        # [n] int64
    latents: torch.Tensor      # [n, D]
    stopped: bool


async def collect_segment(gpt: GPTStage, voice: VoiceSpec, segment: Segment,
                          options: SamplingOptions) -> SegmentCodes:
    """Drain one segment's code stream; the final chunk carries every code and the latents."""
    final: Optional[CodeChunk] = None
    gen = gpt.generate(voice, segment, options, partial=False)
    try:
        async for chunk in gen:
            if chunk.final:
                final = chunk
    finally:
        await gen.aclose()
    if final is None or final.latents is None:
        raise RuntimeError("GPT stage ended a segment without its final chunk")
    return SegmentCodes(final.codes, final.latents, final.stopped)


class Synthesizer:
    """Runs frontend -> GPT -> vocoder for one utterance, streaming audio per segment."""

    def __init__(self, frontend: FrontendStage, gpt: GPTStage, vocoder: VocoderStage,
                 lookahead: int = 4):
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.frontend = frontend
        self.gpt = gpt
        self.vocoder = vocoder
        self.lookahead = lookahead

    async def stream(self, text: str, voice: VoiceSpec, options: SamplingOptions = SamplingOptions(),
                     max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT
                     ) -> AsyncIterator[AudioChunk]:
        """Audio per segment, in order, as soon as each is ready."""
        front: FrontendResult = await self.frontend.process(text, max_tokens_per_segment)
        segments = list(front.segments)
        if options.seed is not None and len(segments) > 1:
            # Distinct but reproducible randomness per segment.
            per_segment = [_with_seed(options, options.seed + i) for i in range(len(segments))]
        else:
            per_segment = [options] * len(segments)
        pending: dict[int, asyncio.Task] = {}
        started = time.perf_counter()
        try:
            for i, segment in enumerate(segments):
                for j in range(i, min(i + self.lookahead, len(segments))):
                    if j not in pending:
                        pending[j] = asyncio.ensure_future(
                            collect_segment(self.gpt, voice, segments[j], per_segment[j]))
                result: SegmentCodes = await pending.pop(i)
                if len(result.codes):
                    samples = await self.vocoder.vocode(voice, result.latents)
                else:
                    samples = torch.zeros(0)
                yield AudioChunk(samples=samples, sample_rate=SAMPLE_RATE, final=i == len(segments) - 1,
                                 metadata={"segment": i, "segments": len(segments), "codes": len(result.codes),
                                           "stopped": result.stopped, "text_tokens": len(segment.ids),
                                           "elapsed_s": time.perf_counter() - started})
        finally:
            for task in pending.values():
                task.cancel()
            if pending:
                await asyncio.gather(*pending.values(), return_exceptions=True)

    async def synthesize(self, text: str, voice: VoiceSpec, options: SamplingOptions = SamplingOptions(),
                         max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT) -> torch.Tensor:
        """The whole utterance: `[n]` float32 samples at 24 kHz (segments joined without gaps)."""
        parts = [chunk.samples async for chunk in self.stream(text, voice, options, max_tokens_per_segment)]
        return torch.cat(parts) if parts else torch.zeros(0)


def _with_seed(options: SamplingOptions, seed: int) -> SamplingOptions:
    return replace(options, seed=seed % 2**63)
