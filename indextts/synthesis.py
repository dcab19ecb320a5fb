"""Text -> audio over the three stages, shared by the single-process facade and the Serve ingress.

Segments are independent in IndexTTS (each is conditioned only on the voice), so up to
`lookahead` segments are generated and vocoded at once, chunk by chunk, while earlier ones are
played; audio still comes out in text order. Within a segment, each GPT chunk's latents go to
the vocoder as a window (`WindowCutter`) with the context and lookahead it asks for, so the
chunks' audio joins into the segment's whole-segment audio. Cancelling the consumer cancels every
in-flight stage call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import AsyncIterator, Optional

import torch

from indextts.audio import SAMPLE_RATE
from indextts.errors import IncompleteSegmentError
from indextts.scheduling import FIRST_AUDIO_LEAD_S, cpu_gate
from indextts.stages.base import FrontendStage, GPTStage, VocoderStage
from indextts.text.frontend import check_speakable
from indextts.types import AudioChunk, ChunkSchedule, SamplingOptions, Segment, VoiceSpec
from indextts.vocoder.streaming import WindowCutter

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_PER_SEGMENT = 120
SECONDS_PER_TEXT_TOKEN = 0.2     # a rough speech duration per BPE token, for segment deadlines only
LENGTH_BIAS = 0.1                # first audio of a request is due this much later per second of its audio

class Synthesizer:
    """Runs frontend -> GPT -> vocoder for one utterance, streaming audio per chunk."""

    def __init__(self, frontend: FrontendStage, gpt: GPTStage, vocoder: VocoderStage, lookahead: int = 4):
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.frontend = frontend
        self.gpt = gpt
        self.vocoder = vocoder
        self.lookahead = lookahead
        self._window_frames: Optional[tuple[int, int]] = None

    async def ready(self) -> None:
        """Return once every stage can serve (each warmed up and healthy); raise if one cannot."""
        await asyncio.gather(self.frontend.ready(), self.gpt.ready(), self.vocoder.ready())

    async def stream(self, text: str, voice: VoiceSpec, options: SamplingOptions = SamplingOptions(),
                     max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT,
                     schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[AudioChunk]:
        """Audio of each code chunk, in order, as soon as it is ready. The last chunk of a segment
        has `metadata["segment_end"]`; the utterance's last chunk has `final=True`. `schedule`:
        how the GPT stage cuts the first segment into chunks (None: the stage's own). Later
        segments decode ahead while earlier audio plays, so they come whole when the lookahead
        allows: the same audio, without the windows' recomputed context (about twice the
        vocoder's work per second of audio)."""
        if self._window_frames is None:
            self._window_frames = await self.vocoder.window_frames()
        front = check_speakable(await self.frontend.process(text, max_tokens_per_segment))
        segments = _with_deadlines(front.segments, time.time())
        if not segments:
            return
        # Until its first audio, this request's work has the process's CPU before less urgent work.
        first_audio = contextlib.ExitStack()
        first_audio.enter_context(cpu_gate().reserve(segments[0].deadline))
        queues: dict[int, asyncio.Queue] = {}
        tasks: list[asyncio.Task] = []
        started = time.perf_counter()
        try:
            for i, segment in enumerate(segments):
                for j in range(i, min(i + self.lookahead, len(segments))):
                    if j not in queues:
                        queues[j] = asyncio.Queue()
                        tasks.append(asyncio.ensure_future(self._segment(
                            segments[j], voice, _segment_options(options, j, len(segments)),
                            schedule if j == 0 or self.lookahead == 1 else ChunkSchedule.whole(), queues[j])))
                queue = queues.pop(i)
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    chunk, samples, codes = item
                    first_audio.close()
                    yield AudioChunk(samples=samples, sample_rate=SAMPLE_RATE,
                                     final=chunk.final and i == len(segments) - 1,
                                     metadata={"segment": i, "segments": len(segments), "codes": codes,
                                               "segment_end": chunk.final, "stopped": chunk.stopped,
                                               "text_tokens": len(segment.ids) if chunk.final else 0,
                                               "elapsed_s": time.perf_counter() - started})
        finally:
            first_audio.close()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _segment(self, segment: Segment, voice: VoiceSpec, options: SamplingOptions,
                       schedule: Optional[ChunkSchedule], out: asyncio.Queue) -> None:
        """Generates and vocodes one segment chunk by chunk into `out`; then None (or the error).
        A GPT stream that ends without a final chunk is an error: the segment's audio would be cut short."""
        chunks = None
        try:                          # every error, a failed call included, reaches the consumer
            chunks = self.gpt.generate(voice, segment, options, schedule)
            windows = WindowCutter(*self._window_frames)
            codes = 0                 # codes of chunks whose frames await their lookahead
            played = 0                # samples of this segment sent so far
            finished = False
            async for chunk in chunks:
                finished = chunk.final
                codes += len(chunk.codes)
                window = windows.push(chunk.latents, chunk.final)
                if window is None and not chunk.final:
                    continue          # nothing due yet: no empty audio chunk
                if window is not None and segment.deadline is not None:   # due when its audio would play
                    window = replace(window, deadline=segment.deadline + played / SAMPLE_RATE)
                samples = await self.vocoder.vocode(voice, window) if window is not None else torch.zeros(0)
                played += samples.numel()
                out.put_nowait((chunk, samples, codes))
                codes = 0
            if not finished:
                raise IncompleteSegmentError("the GPT stage ended the segment before its last chunk")
            out.put_nowait(None)
        except Exception as e:          # handed to the consumer, which raises it in order
            out.put_nowait(e)
        finally:
            if chunks is not None:
                await chunks.aclose()

    async def synthesize(self, text: str, voice: VoiceSpec, options: SamplingOptions = SamplingOptions(),
                         max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT,
                         schedule: Optional[ChunkSchedule] = None) -> torch.Tensor:
        """The whole utterance: `[n]` float32 samples at 24 kHz (segments joined without gaps)."""
        parts = [chunk.samples async for chunk in self.stream(text, voice, options, max_tokens_per_segment,
                                                              schedule)]
        return torch.cat(parts) if parts else torch.zeros(0)


def _with_deadlines(segments, start: float) -> list[Segment]:
    """Each segment due when the audio before it would have played from `start`, estimated from
    text tokens; stages serve earlier deadlines first, so a request that is ahead of playback
    yields to one that is not. The first segment is due `FIRST_AUDIO_LEAD_S` before `start`,
    later the longer the request (`LENGTH_BIAS` of its estimated audio): a one-line request's
    first audio is not queued behind a long text's, and a long one waits a bounded time."""
    total = SECONDS_PER_TEXT_TOKEN * sum(len(segment.ids) for segment in segments)
    out, due = [], start
    for i, segment in enumerate(segments):
        first = start - FIRST_AUDIO_LEAD_S + LENGTH_BIAS * total
        out.append(replace(segment, deadline=first if i == 0 else due))
        due += SECONDS_PER_TEXT_TOKEN * len(segment.ids)
    return out


def _segment_options(options: SamplingOptions, index: int, count: int) -> SamplingOptions:
    """Distinct but reproducible randomness per segment when a seed is given."""
    if options.seed is None or count == 1:
        return options
    return replace(options, seed=(options.seed + index) % 2**63)
