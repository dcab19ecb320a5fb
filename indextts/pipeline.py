"""`IndexTTS`: the library facade. Load a checkpoint once, turn text + voice into 24 kHz audio.

    tts = IndexTTS.from_pretrained("checkpoints/IndexTTS-1.5", device="cuda")
    voice = tts.voice(["alice.wav"])
    audio = tts.synthesize("Hello there.", voice)            # [n] int16 at 24 kHz
    for chunk in tts.stream("A long text ...", voice): ...   # AudioChunk as soon as each is ready

The stages come from `indextts.stages.build_stages` and run in this process on an event loop of
its own thread; the Serve graph (`serve_app/`) runs the same stages as deployments. All request
state lives in the call; one `IndexTTS` is safe to use from many threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import AsyncIterator, Iterator, Optional, Sequence, Union

import torch

from indextts.audio import SAMPLE_RATE, ReferenceLimits, float_to_int16
from indextts.checkpoint import CheckpointInfo
from indextts.errors import OptionsError, VoiceError
from indextts.stages import StageOptions, Stages, build_stages
from indextts.synthesis import DEFAULT_MAX_TOKENS_PER_SEGMENT, Synthesizer
from indextts.types import AudioChunk, ChunkSchedule, SamplingOptions, VoiceSpec

logger = logging.getLogger(__name__)


class _LoopThread:
    """An asyncio loop on a daemon thread, so synchronous callers can drive async stages."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="indextts-loop", daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator) -> Iterator:
        """Drive an async iterator from synchronous code, one item at a time."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


VoiceLike = Union[VoiceSpec, str, Path, Sequence[Union[str, Path]]]


class IndexTTS:
    """Load once, synthesise many times (from any number of threads)."""

    def __init__(self, info: CheckpointInfo, stages: Stages, lookahead: int = 4):
        self.info = info
        self.stages = stages
        self.synthesizer = Synthesizer(stages.frontend, stages.gpt, stages.vocoder, lookahead=lookahead)
        self._loop = _LoopThread()
        self._clamp_warned = False

    @property
    def frontend(self):
        return self.stages.frontend

    @property
    def gpt(self):
        return self.stages.gpt

    @property
    def vocoder(self):
        return self.stages.vocoder

    @classmethod
    def from_pretrained(cls, model_dir: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        dtype: Optional[torch.dtype] = None, engine: str = "torch",
                        gpu_memory_utilization: float = 0.5, text_cache_dir: Optional[str] = None,
                        reference_limits: ReferenceLimits = ReferenceLimits(),
                        options: Optional[StageOptions] = None, **engine_kwargs) -> "IndexTTS":
        """Load `model_dir` (a directory or hub id). `engine` is "torch" (any device) or "vllm";
        `engine_kwargs` go to the vLLM engine. `options` replaces all of these at once."""
        if options is None:
            options = StageOptions(device=device, dtype=dtype, engine=engine,
                                   gpu_memory_utilization=gpu_memory_utilization, text_cache_dir=text_cache_dir,
                                   reference_limits=reference_limits, engine_kwargs=engine_kwargs)
        options.torch_device     # an unusable device fails before anything loads
        info = CheckpointInfo.from_dir(model_dir)
        return cls(info, build_stages(info, options))

    def voice(self, references: VoiceLike, weights: Optional[Sequence[float]] = None, name: str = "") -> VoiceSpec:
        """A voice from one or more reference recordings (several are averaged, optionally weighted)."""
        if isinstance(references, VoiceSpec):
            return references
        refs = [references] if isinstance(references, (str, Path)) else list(references)
        if not refs:
            raise VoiceError("a voice needs at least one reference recording")
        for ref in refs:
            if not Path(ref).is_file():
                raise VoiceError(f"reference audio not found: {ref}")
        try:
            return VoiceSpec(tuple(str(Path(r).resolve()) for r in refs),
                             tuple(float(w) for w in weights) if weights is not None else None, name)
        except ValueError as e:
            raise VoiceError(str(e)) from e

    def stream(self, text: str, voice: VoiceLike, options: SamplingOptions = SamplingOptions(),
               max_tokens_per_segment: Optional[int] = None,
               chunk_schedule: Optional[ChunkSchedule] = None) -> Iterator[AudioChunk]:
        """Audio as `AudioChunk`s (float32 samples at 24 kHz), each as soon as it is ready.

        `max_tokens_per_segment` defaults to 120, or the checkpoint's `max_text_tokens` if smaller.
        `chunk_schedule`: how segments are cut into chunks for this call (None: the stages'
        `StageOptions.chunk_schedule`); the audio is the same for every schedule."""
        max_tokens = self._max_tokens(max_tokens_per_segment)
        agen = self.synthesizer.stream(text, self.voice(voice), options, max_tokens, chunk_schedule)
        return self._loop.iterate(agen)

    def synthesize(self, text: str, voice: VoiceLike, options: SamplingOptions = SamplingOptions(),
                   max_tokens_per_segment: Optional[int] = None,
                   chunk_schedule: Optional[ChunkSchedule] = None) -> torch.Tensor:
        """The whole utterance as int16 samples `[n]` at 24 kHz (the original's output conversion)."""
        chunks = [c.samples for c in self.stream(text, voice, options, max_tokens_per_segment, chunk_schedule)]
        return float_to_int16(torch.cat(chunks)) if chunks else torch.zeros(0, dtype=torch.int16)

    def run(self, coro):
        """Run a coroutine on this pipeline's event loop, where its async stages live (e.g. many
        `self.synthesizer.stream(...)` calls gathered at once), and return its result."""
        return self._loop.run(coro)

    def _max_tokens(self, n: Optional[int]) -> int:
        """The segment limit: a request above the checkpoint's text table is clamped to it (the
        original accepts its default 120 on every checkpoint and cuts segments to fit), with one
        warning per instance."""
        limit = self.info.config.gpt.max_segment_tokens
        if n is None:
            return min(DEFAULT_MAX_TOKENS_PER_SEGMENT, limit)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise OptionsError(f"max_tokens_per_segment must be a positive integer, got {n!r}")
        if n > limit and not self._clamp_warned:
            self._clamp_warned = True
            logger.warning("max_tokens_per_segment %d exceeds this checkpoint's text position table; using %d",
                           n, limit)
        return min(n, limit)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def close(self) -> None:
        """Closes the stages on the event loop they run on (so that vLLM's output task is not
        mid-read when its engine stops: it would report the engine dead), then stops the loop."""
        async def close_stages():
            self.stages.close()
        self._loop.run(close_stages())
        self._loop.stop()

    def __enter__(self) -> "IndexTTS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
