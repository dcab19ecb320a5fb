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

from indextts.errors import OptionsError
from indextts.types import ChunkSchedule
from serve_app.security import AccessSettings, parse_keys, parse_origins, read_keys_file, split_list

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
    accelerator_resource: Optional[str] = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="a custom Ray resource the GPT and vocoder replicas also ask for (gpt_num_gpus / "
                    "vocoder_num_gpus of it): places them on the nodes that declare it, e.g. "
                    "`ray start --resources='{\"tts_accel\": 1}'` on GPU nodes, or CPU nodes in tests")
    replica_num_cpus: Optional[float] = Field(None, ge=0.0, le=64.0,
                                              description="CPUs each replica reserves; default 1 with "
                                                          "device=cuda, 0.25 with device=cpu (so the whole "
                                                          "graph fits on a laptop's cores)")
    vocoder_max_batch_size: int = Field(8, ge=1, le=256, description="chunks per BigVGAN call (those "
                                        "waiting while a call runs go together in the next)")
    vocoder_mixed_length_batches: bool = Field(
        False, description="batch segments of different lengths (right-padded, per-item lengths): "
        "more batching under load, equal to unbatched output up to float rounding (~1e-6), not bit for bit")
    vocoder_cuda_graphs: bool = Field(False, description="on CUDA, BigVGAN calls replay CUDA graphs captured at "
                                      "replica start per (batch, window length) bucket; off by default: the "
                                      "schedule's windows are GPU-bound, not launch-bound (docs/benchmarks.md)")
    chunk_schedule: str = Field(str(ChunkSchedule.streaming()),
                                description="codes per GPT chunk of a request's first segment, comma-separated, "
                                            "the last repeating (small first: early first audio), or 'whole' (one "
                                            "chunk per segment); later segments always come whole")
    vocoder_lookahead: Optional[int] = Field(None, ge=0, le=64,
                                             description="latent frames the vocoder waits for past the frames "
                                                         "it emits; default: its receptive field (chunked audio "
                                                         "equals whole-segment audio); less: earlier, inexact")
    max_tokens_per_segment: int = Field(120, ge=1, le=600)
    max_input_chars: int = Field(4096, ge=1)
    request_timeout_s: float = Field(300.0, gt=0.0, description="seconds a request may take in all, held by the "
                                     "ingress with or without a config file: then a 504 envelope, or a cut stream")
    segment_lookahead: int = Field(4, ge=1, le=64, description="segments generated ahead of playback")
    max_upload_files: int = Field(8, ge=1, le=64)
    max_upload_mb: float = Field(20.0, gt=0.0, le=1024.0)
    model_name: str = "indextts"
    ui: bool = Field(True, description="the web UI at /ui (needs the 'ui' extra: gradio); ui=false leaves it out")
    text_cache_dir: Optional[str] = Field(None, description="where the text normaliser caches its FSTs")
    check_model_dir: bool = Field(True, description="validate model_dir when the graph is built")
    # Access control (serve_app.security; README "Access control"). Keys are left out of repr.
    api_keys: tuple[str, ...] = Field((), repr=False, description="keys clients send as 'Authorization: "
                                      "Bearer <key>' (list or comma-separated; 'admin:<key>' is an admin key); "
                                      "none configured anywhere: the API is open")
    api_keys_file: Optional[str] = Field(None, description="file of keys, one per line (# comments, 'admin:' "
                                                           "prefix), read when the graph is built")
    api_keys_env: Optional[str] = Field(None, description="environment variable of comma-separated keys "
                                                          "('admin:' prefix), read in each ingress replica")
    admin_api_keys: tuple[str, ...] = Field((), repr=False, description="admin keys (list or comma-separated): "
                                            "once any admin key is set, only they may upload or delete voices")
    cors_allow_origins: tuple[str, ...] = Field((), description="origins browsers may call from (list or "
                                                "comma-separated, '*' for any); none: cross-origin writes refused")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("chunk_schedule")
    @classmethod
    def _chunk_schedule(cls, value: str) -> str:
        try:
            return str(ChunkSchedule.parse(value))
        except OptionsError as e:
            raise ValueError(str(e)) from None

    @field_validator("api_keys", "admin_api_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _split_list(cls, value):
        return split_list(value)     # `serve run api_keys=a,b` passes one string

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return parse_origins(value)

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


    def access_settings(self) -> AccessSettings:
        """The API's `AccessSettings`: the inline keys plus those of `api_keys_file` (read now: a
        missing file fails the build); `api_keys_env` is read later, where the API runs."""
        users, admins = parse_keys(self.api_keys)
        admins |= parse_keys(self.admin_api_keys, admin=True)[1]
        if self.api_keys_file:
            file_users, file_admins = read_keys_file(self.api_keys_file)
            users, admins = users | file_users, admins | file_admins
        return AccessSettings(api_keys=users, admin_keys=admins, cors_allow_origins=self.cors_allow_origins,
                              api_keys_env=self.api_keys_env)

    def accelerator_options(self, share: float) -> dict:
        """The `ray_actor_options` of a GPU stage's replica: its GPU share on cuda, and its share of
        `accelerator_resource` when one is named."""
        options: dict = {"num_cpus": self.num_cpus, "num_gpus": share if self.on_gpu else 0}
        if self.accelerator_resource:
            options["resources"] = {self.accelerator_resource: share}
        return options

    def stage_options(self):
        """The library's `StageOptions` for these arguments."""
        import torch

        from indextts.stages import StageOptions

        engine_kwargs = {"max_num_seqs": self.max_num_seqs}
        if self.enforce_eager is not None:
            engine_kwargs["enforce_eager"] = self.enforce_eager
        return StageOptions(device=self.device, dtype=None if self.dtype == "auto" else getattr(torch, self.dtype),
                            engine=self.gpt_engine, gpu_memory_utilization=self.gpu_memory_utilization,
                            engine_kwargs=engine_kwargs, text_cache_dir=self.text_cache_dir,
                            voice_cache_size=self.voice_cache_size, vocoder_max_batch=self.vocoder_max_batch_size,
                            vocoder_mixed_length_batches=self.vocoder_mixed_length_batches,
                            vocoder_cuda_graphs=self.vocoder_cuda_graphs,
                            chunk_schedule=ChunkSchedule.parse(self.chunk_schedule),
                            vocoder_lookahead=self.vocoder_lookahead)


@dataclass(frozen=True)
class StageFactory:
    """Builds one real stage from `AppArgs` when a replica starts (`stage` picks which), through
    the library's `build_stages`."""

    stage: Literal["frontend", "gpt", "vocoder"]
    args: AppArgs

    def __call__(self):
        from indextts.stages import build_stages

        built = build_stages(self.args.model_dir, self.args.stage_options(), only=(self.stage,))
        return getattr(built, self.stage)
