"""`VLLMGPTStage`: the GPT stage (`indextts.stages.GPTStage`) on the vLLM engine.

Voices are encoded here with the conformer + perceiver only (`checkpoint.load_conditioner`):
the GPT's weights live once, inside vLLM.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import torch

from indextts.audio import ReferenceLimits
from indextts.checkpoint import CheckpointInfo, load_conditioner
from indextts.pipeline import VoiceConditioner, check_segment_options
from indextts.stages import VoiceSpec
from indextts.types import CodeChunk, SamplingOptions, Segment

_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class VLLMGPTStage:
    def __init__(self, engine, conditioner, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64):
        self.engine = engine
        self.conditioning = VoiceConditioner(conditioner, limits, cache_size)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="conditioning")
        self._warm_up: "asyncio.Future | None" = None

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                        limits: ReferenceLimits = ReferenceLimits(), gpu_memory_utilization: float = 0.5,
                        cache_size: int = 64, **engine_kwargs) -> "VLLMGPTStage":
        from indextts.vllm.engine import VLLMEngine

        if device.type == "cpu":
            engine_kwargs.setdefault("enforce_eager", True)
        engine = VLLMEngine.create(info.model_dir, dtype=_VLLM_DTYPES.get(dtype, "auto"),
                                   gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)
        return cls(engine, load_conditioner(info, device, dtype), limits, cache_size)

    @property
    def cfg(self):
        return self.engine.config

    async def warm_up(self) -> None:
        """Compile what vLLM compiles on first use (once; later calls wait for the first). A
        warm-up that failed or was cancelled is run again by the next call, not kept."""
        failed = self._warm_up is not None and self._warm_up.done() and (
            self._warm_up.cancelled() or self._warm_up.exception() is not None)
        if self._warm_up is None or failed:
            self._warm_up = asyncio.ensure_future(self.engine.warm_up())
        await asyncio.shield(self._warm_up)

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       partial: bool = True) -> AsyncIterator[CodeChunk]:
        check_segment_options(self.cfg, segment, options)
        await self.warm_up()
        loop = asyncio.get_running_loop()
        cond = await loop.run_in_executor(self._executor, self.conditioning, voice)
        gen = self.engine.generate(cond, segment, options, partial=partial)
        try:
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()

    async def check_health(self) -> None:
        await self.engine.check_health()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.shutdown()
