"""The GPT stage on the PyTorch reference engine (any device; beam search lives here only)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import torch

from indextts.checkpoint import CheckpointInfo, load_gpt
from indextts.stages.conditioning import VoiceConditioner
from indextts.stages.gpt import EngineGPTStage
from indextts.types import CodeChunk, SamplingOptions, Segment


class TorchEngine:
    """Code generation + latents with `UnifiedVoice`: each segment runs in a worker thread with
    its own KV cache; a cancelled consumer stops the worker at its next code."""

    def __init__(self, model, max_workers: int = 16):
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpt")

    def _run(self, cond: torch.Tensor, segment: Segment, options: SamplingOptions, ignore_stop: bool,
             cancelled: threading.Event) -> CodeChunk:
        from indextts.gpt.generation import compute_latents, encode_prompt, result_from_raw, stream_codes
        with torch.no_grad():
            prompt = encode_prompt(self.model, cond, segment.ids)
            if options.num_beams > 1:   # the whole segment is searched before any code is known
                from indextts.gpt.beam_search import beam_search_codes
                result = beam_search_codes(self.model, cond, segment.ids, options, options.num_beams, prompt=prompt)
            else:
                raw = []
                for code in stream_codes(self.model, cond, segment.ids, options, prompt=prompt,
                                         ignore_stop=ignore_stop):
                    if cancelled.is_set():
                        raise asyncio.CancelledError()
                    raw.append(code)
                result = result_from_raw(self.model.cfg, raw, ignore_stop)
            latents = compute_latents(self.model, cond, segment.ids, result.codes, prompt=prompt)
        return CodeChunk(codes=result.codes, latents=latents.float().cpu(), final=True, stopped=result.stopped)

    async def generate(self, cond: torch.Tensor, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       *, ignore_stop: bool = False) -> AsyncIterator[CodeChunk]:
        """The segment as one chunk (codes + latents). cond: [1, 32, D]."""
        cancelled = threading.Event()
        done = asyncio.wrap_future(self._executor.submit(self._run, cond, segment, options, ignore_stop, cancelled))
        try:
            chunk = await asyncio.shield(done)
        finally:
            cancelled.set()
            if not done.done():
                await asyncio.wait([done])    # the worker notices the flag at its next code
            if not done.cancelled():
                done.exception()              # retrieved, so an abandoned run does not log as unhandled
        yield chunk

    async def warm_up(self) -> None:
        """Nothing is compiled on first use."""

    async def check_health(self) -> None:
        """Healthy while its process runs."""

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class TorchGPTStage(EngineGPTStage):
    """Conditioning and generation share one `UnifiedVoice`."""

    def __init__(self, model, conditioning: VoiceConditioner, max_workers: int = 16):
        super().__init__(TorchEngine(model, max_workers), conditioning, model.cfg)
        self.model = model

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "TorchGPTStage":
        model = load_gpt(info, options.torch_device, options.torch_dtype)
        return cls(model, VoiceConditioner(model, options.reference_limits, options.voice_cache_size))

    def close(self) -> None:
        super().close()
        self.engine.close()
