"""The GPT stage on vLLM (`indextts.vllm.engine.VLLMEngine`).

Voices are encoded here with the conformer + perceiver only (`checkpoint.load_conditioner`):
the GPT's weights live once, inside vLLM.
"""

from __future__ import annotations

import torch

from indextts.checkpoint import CheckpointInfo, load_conditioner
from indextts.stages.conditioning import VoiceConditioner
from indextts.stages.gpt import EngineGPTStage

_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class VLLMGPTStage(EngineGPTStage):
    def __init__(self, engine, conditioning: VoiceConditioner):
        super().__init__(engine, conditioning, engine.config)

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "VLLMGPTStage":
        from indextts.vllm.engine import VLLMEngine

        device, dtype = options.torch_device, options.torch_dtype
        engine_kwargs = dict(options.engine_kwargs)
        if device.type == "cpu":
            engine_kwargs.setdefault("enforce_eager", True)
        engine = VLLMEngine.create(info.model_dir, dtype=_VLLM_DTYPES.get(dtype, "auto"),
                                   gpu_memory_utilization=options.gpu_memory_utilization,
                                   schedule=options.chunk_schedule, **engine_kwargs)
        conditioner = load_conditioner(info, device, dtype)
        return cls(engine, VoiceConditioner(conditioner, options.reference_limits, options.voice_cache_size))

    def close(self) -> None:
        super().close()
        self.engine.shutdown()
