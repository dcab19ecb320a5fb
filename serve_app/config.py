"""Typed arguments of the application and the factories that build each stage inside its replica.

`AppArgs` is what `serve run serve_app.app:build_app key=value ...` and the `args:` section of
`configs/serve_config.yaml` fill in (Serve validates the dict against it). Stages are built in
the replica, not in the driver: `StageFactory` is a small picklable recipe that the replica
calls, so a GPU engine is only ever created on the GPU worker that runs it. Tests pass their
own zero-argument callables instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

DEFAULT_VOICES_DIR = Path.home() / ".cache" / "indextts" / "voices"
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class AppArgs(BaseModel):
    """Arguments of `build_app`; every field can be given as `key=value` on `serve run`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str = Field(description="checkpoint directory (official layout) or hub id")
    device: str = Field("cuda", description="cpu, cuda or cuda:N (inside each GPU replica)")
    voices_dir: Optional[str] = Field(None, description="speaker.json + uploaded voices; a shared "
                                                        "volume on multi-node clusters")
    gpt_engine: Literal["vllm", "torch"] = "vllm"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    gpu_memory_utilization: float = Field(0.25, gt=0.0, le=1.0,
                                          description="vLLM's share of the GPU (weights + KV cache); "
                                                      "leave room for the co-located vocoder")
    max_num_seqs: int = Field(64, ge=1, le=4096, description="vLLM: sequences decoded together")
    enforce_eager: Optional[bool] = Field(None, description="vLLM: skip torch.compile/CUDA graphs (fast "
                                                            "start); default: the engine's (eager on CPU)")
    voice_cache_size: int = Field(64, ge=1, description="voices whose conditioning each replica keeps")
    gpt_num_gpus: float = Field(0.5, ge=0.0, le=8.0, description="GPU share of a GPT replica (cuda)")
    vocoder_num_gpus: float = Field(0.25, ge=0.0, le=8.0, description="GPU share of a vocoder replica (cuda)")
    replica_num_cpus: Optional[float] = Field(None, ge=0.0, le=64.0,
                                              description="CPUs each replica reserves; default 1 with "
                                                          "device=cuda, 0.25 with device=cpu (so the whole "
                                                          "graph fits on a laptop's cores)")
    vocoder_max_batch_size: int = Field(8, ge=1, le=256)
    vocoder_batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=1.0)
    vocoder_mixed_length_batches: bool = Field(
        False, description="batch segments of different lengths (right-padded, per-item lengths): "
        "more batching under load, equal to unbatched output up to float rounding (~1e-6), not bit for bit")
    max_tokens_per_segment: int = Field(120, ge=1, le=600)
    bench_forced_codes: Optional[int] = Field(
        None, ge=1, le=2000, description="benchmarks on random-weight checkpoints only: every segment "
        "generates exactly this many codes, ignoring the stop code (random weights rarely emit it)")
    max_input_chars: int = Field(4096, ge=1)
    segment_lookahead: int = Field(4, ge=1, le=64, description="segments generated ahead of playback")
    max_upload_files: int = Field(8, ge=1, le=64)
    max_upload_mb: float = Field(20.0, gt=0.0, le=1024.0)
    model_name: str = "indextts"
    text_cache_dir: Optional[str] = Field(None, description="where the text normaliser caches its FSTs")
    check_model_dir: bool = Field(True, description="validate model_dir when the graph is built")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {value!r}")
        return value

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def num_cpus(self) -> float:
        if self.replica_num_cpus is not None:
            return self.replica_num_cpus
        return 1.0 if self.on_gpu else 0.25

    def resolved_voices_dir(self) -> Path:
        return Path(self.voices_dir).expanduser().resolve() if self.voices_dir else DEFAULT_VOICES_DIR


@dataclass(frozen=True)
class StageFactory:
    """Builds one real stage from `AppArgs` when a replica starts (`stage` picks which)."""

    stage: Literal["frontend", "gpt", "vocoder"]
    args: AppArgs

    def __call__(self):
        return {"frontend": make_frontend_stage, "gpt": make_gpt_stage,
                "vocoder": make_vocoder_stage}[self.stage](self.args)


def _device_and_dtype(args: AppArgs):
    import torch

    from indextts.pipeline import default_dtype, parse_device

    device = parse_device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    return device, dtype


def make_frontend_stage(args: AppArgs):
    from indextts.checkpoint import CheckpointInfo
    from indextts.pipeline import TextFrontendStage

    info = CheckpointInfo.from_dir(args.model_dir, require_weights=False)
    return TextFrontendStage.from_model_dir(info.model_dir, cache_dir=args.text_cache_dir)


def make_gpt_stage(args: AppArgs):
    from indextts.checkpoint import CheckpointInfo

    info = CheckpointInfo.from_dir(args.model_dir)
    device, dtype = _device_and_dtype(args)
    if args.gpt_engine == "torch":
        from indextts.pipeline import TorchGPTStage
        return TorchGPTStage.from_checkpoint(info, device, dtype, cache_size=args.voice_cache_size)
    from indextts.vllm.stage import VLLMGPTStage
    engine_options = {"max_num_seqs": args.max_num_seqs}
    if args.enforce_eager is not None:
        engine_options["enforce_eager"] = args.enforce_eager
    return VLLMGPTStage.from_checkpoint(info, device, dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                                        cache_size=args.voice_cache_size, **engine_options)


def make_vocoder_stage(args: AppArgs):
    from indextts.checkpoint import CheckpointInfo
    from indextts.pipeline import VocoderEngineStage, vocoder_dtype

    info = CheckpointInfo.from_dir(args.model_dir)
    device, dtype = _device_and_dtype(args)
    return VocoderEngineStage.from_checkpoint(info, device, vocoder_dtype(device, dtype),
                                              cache_size=args.voice_cache_size, max_batch=args.vocoder_max_batch_size,
                                              mixed_length_batches=args.vocoder_mixed_length_batches)
