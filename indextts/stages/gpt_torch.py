"""The GPT stage on the PyTorch reference engine (any device; beam search lives here only)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Iterator, Optional

import torch

from indextts.checkpoint import CheckpointInfo, load_gpt
from indextts.gpt import generation
from indextts.gpt.chunking import CodeCutter, Cut
from indextts.scheduling import PriorityGate, cpu_gate, current_turn
from indextts.stages.conditioning import VoiceConditioner
from indextts.stages.gpt import EngineGPTStage
from indextts.types import ChunkSchedule, CodeChunk, SamplingOptions, Segment


class ChunkCutter:
    """`CodeCutter` whose chunks carry their latents from one `LatentPass` (one object per
    segment, used by one thread)."""

    def __init__(self, latent_pass: generation.LatentPass, schedule: ChunkSchedule):
        self.latent_pass = latent_pass
        self.codes = CodeCutter(schedule)

    def push(self, codes: list[int]) -> list[CodeChunk]:
        """codes: the next final codes -> the chunks they complete (none final)."""
        return [self._chunk(cut, False) for cut in self.codes.push(codes)]

    def finish(self, stopped: bool) -> CodeChunk:
        """The segment ended: the last chunk, with what is pending."""
        return self._chunk(self.codes.finish(), stopped)

    def _chunk(self, cut: Cut, stopped: bool) -> CodeChunk:
        latents = self.latent_pass.extend(cut.codes).float().cpu()          # [n, D]
        return CodeChunk(torch.tensor(cut.codes, dtype=torch.long), latents, start=cut.start, final=cut.final,
                         stopped=stopped)


class TorchEngine:
    """Code generation + latents with `UnifiedVoice`: each segment runs in a worker thread with
    its own KV cache and yields its chunks (see `ChunkSchedule`) as their codes are generated;
    a cancelled consumer stops the worker at its next code."""

    def __init__(self, model, max_workers: int = 64, schedule: ChunkSchedule = ChunkSchedule.whole(),
                 step_slots: Optional[int] = None):
        """`max_workers`: segments in flight (a thread each; the GPT deployment's
        `max_ongoing_requests` stays within it, so none queues for a thread). `step_slots`:
        segments decoding a step at the same time (None: 1 on a CPU, where concurrent steps only
        share the cores, else no limit); waiting segments go in order of their deadlines, so a
        new request is not queued behind others' whole segments."""
        self.model = model
        self.schedule = schedule
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpt")
        if step_slots is None:       # on a CPU: the process's gate, shared with the vocoder
            self._gate = cpu_gate() if model.device.type == "cpu" else None
        else:
            self._gate = PriorityGate(step_slots)

    def _chunks(self, cond: torch.Tensor, segment: Segment, options: SamplingOptions, ignore_stop: bool,
                schedule: ChunkSchedule, cancelled: threading.Event) -> Iterator[CodeChunk]:
        """The segment's chunks, in order, computed in the calling (worker) thread."""
        model = self.model
        with torch.no_grad():
            prompt = generation.encode_prompt(model, cond, segment.ids)
            cutter = ChunkCutter(generation.LatentPass(model, prompt, generation.max_codes_for(model, options)),
                                 schedule)
            if options.num_beams > 1:   # the whole segment is searched before any code is known
                from indextts.gpt.beam_search import beam_search_codes
                result = beam_search_codes(model, cond, segment.ids, options, options.num_beams, prompt=prompt)
                yield from cutter.push(result.codes.tolist())
                yield cutter.finish(result.stopped)
                return
            # ignore_stop keeps the codes as they come, as result_from_raw does
            shrinker = None if ignore_stop else generation.SilenceShrinker(model.cfg.stop_mel_token)
            turn = current_turn()
            # looked up per call (not imported by name) so that tests can wrap stream_codes
            for code in generation.stream_codes(model, cond, segment.ids, options, prompt=prompt,
                                                ignore_stop=ignore_stop):
                if cancelled.is_set():
                    raise asyncio.CancelledError()
                yield from cutter.push([code] if shrinker is None else shrinker.push([code]))
                turn.pause()          # a segment due earlier takes the next step
            if shrinker is None:
                yield cutter.finish(False)
            else:
                yield from cutter.push(shrinker.finish())
                yield cutter.finish(shrinker.stopped)

    def _run(self, cond: torch.Tensor, segment: Segment, options: SamplingOptions, ignore_stop: bool,
             schedule: ChunkSchedule, cancelled: threading.Event, deliver: Callable[[CodeChunk], None]) -> None:
        with (self._gate.turn(segment.deadline or time.time()) if self._gate else nullcontext()):
            for chunk in self._chunks(cond, segment, options, ignore_stop, schedule, cancelled):
                deliver(chunk)

    async def generate(self, cond: torch.Tensor, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       *, ignore_stop: bool = False,
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        """The segment's chunks (codes + latents [n, D]) as they are generated; the last has
        `final=True`. cond: [1, 32, D]. `schedule`: None is the engine's own."""
        schedule = self.schedule if schedule is None else schedule
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def deliver(chunk: CodeChunk) -> None:        # worker thread -> event loop, in order
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        done = asyncio.wrap_future(self._executor.submit(self._run, cond, segment, options, ignore_stop, schedule,
                                                         cancelled, deliver))
        # scheduled after every chunk the worker delivered: wakes the consumer if the worker failed
        done.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    done.result()             # the worker's error; a worker that returned sent a final chunk
                    raise RuntimeError("the GPT worker ended without a final chunk")
                yield chunk
                if chunk.final:
                    return
        finally:
            cancelled.set()
            if not done.done():
                await asyncio.wait([done])    # the worker notices the flag at its next code
            if not done.cancelled():
                done.exception()              # retrieved, so an abandoned run does not log as unhandled

    async def warm_up(self) -> None:
        """Nothing is compiled on first use."""

    async def check_health(self) -> None:
        """Healthy while its process runs."""

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class TorchGPTStage(EngineGPTStage):
    """Conditioning and generation share one `UnifiedVoice`; segments are chunked by `schedule`."""

    def __init__(self, model, conditioning: VoiceConditioner, max_workers: int = 64,
                 schedule: ChunkSchedule = ChunkSchedule.whole()):
        super().__init__(TorchEngine(model, max_workers, schedule), conditioning, model.cfg)
        self.model = model

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "TorchGPTStage":
        model = load_gpt(info, options.torch_device, options.torch_dtype)
        return cls(model, VoiceConditioner(model, options.reference_limits, options.voice_cache_size),
                   schedule=options.chunk_schedule)

    def close(self) -> None:
        super().close()
        self.engine.close()
