"""`build_stages(checkpoint, options)`: the stages of a checkpoint, chosen by its model version.

`MODEL_STAGES` maps each model version (`config.yaml`'s `version`) to the classes of its stages,
by import path so that an engine's dependencies (vLLM) load only when that engine is built:

    MODEL_STAGES = {
        "1.0": ModelStages(frontend=..., gpt={"torch": ..., "vllm": ...}, vocoder=...),
        "1.5": ModelStages(...),
    }

IndexTTS 1.0 and 1.5 share one architecture (their differences are configuration), so both
entries name the same classes. A new model version is a new entry naming its own stage modules;
every caller (`IndexTTS.from_pretrained`, the CLI, the Serve app) builds through this function.
Each stage class has `from_checkpoint(info, options)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from indextts.audio import ReferenceLimits
from indextts.checkpoint import CheckpointInfo
from indextts.errors import OptionsError
from indextts.stages.base import FrontendStage, GPTStage, VocoderStage
from indextts.types import ChunkSchedule

STAGE_NAMES = ("frontend", "gpt", "vocoder")


@dataclass(frozen=True)
class ModelStages:
    """The stage classes of one model version, as "module:Class" import paths."""

    frontend: str
    gpt: Mapping[str, str]          # engine name -> class
    vocoder: str


_V1 = ModelStages(frontend="indextts.stages.frontend:TextFrontendStage",
                  gpt={"torch": "indextts.stages.gpt_torch:TorchGPTStage",
                       "vllm": "indextts.stages.gpt_vllm:VLLMGPTStage"},
                  vocoder="indextts.stages.vocoder:BigVGANStage")
MODEL_STAGES: dict[str, ModelStages] = {"1.0": _V1, "1.5": _V1}
ENGINES = ("torch", "vllm")


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """A torch device that exists here, or `OptionsError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise OptionsError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionsError(f"device {device!r} requested but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionsError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise OptionsError(f"device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.bfloat16


@dataclass(frozen=True)
class StageOptions:
    """How to build the stages. `dtype` None: bfloat16 on GPUs, float32 on the CPU.
    `engine_kwargs` go to the vLLM engine (`VLLMEngine.create`, e.g. `max_num_seqs`).
    `chunk_schedule`: how the GPT stage cuts segments into chunks (a call may pass its own);
    `vocoder_lookahead`: latent frames the vocoder waits for past the frames it emits;
    `vocoder_cuda_graphs`: on CUDA, capture BigVGAN per (batch, window length) bucket at start."""

    device: Union[str, torch.device] = "cpu"
    dtype: Optional[torch.dtype] = None
    engine: str = "torch"
    gpu_memory_utilization: float = 0.5
    engine_kwargs: Mapping[str, object] = field(default_factory=dict)
    text_cache_dir: Optional[str] = None
    reference_limits: ReferenceLimits = ReferenceLimits()
    voice_cache_size: int = 64
    vocoder_max_batch: int = 32
    vocoder_mixed_length_batches: bool = False
    chunk_schedule: ChunkSchedule = ChunkSchedule.streaming()
    vocoder_lookahead: Optional[int] = None     # frames; None: the receptive field's (exact)
    vocoder_cuda_graphs: bool = False           # on CUDA: BigVGAN calls replay graphs captured at start

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise OptionsError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise OptionsError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.voice_cache_size < 1:
            raise OptionsError(f"voice_cache_size must be at least 1, got {self.voice_cache_size}")
        if not isinstance(self.chunk_schedule, ChunkSchedule):
            raise OptionsError(f"chunk_schedule must be a ChunkSchedule, got {self.chunk_schedule!r}")
        if self.vocoder_lookahead is not None and self.vocoder_lookahead < 0:
            raise OptionsError(f"vocoder_lookahead must be at least 0 frames, got {self.vocoder_lookahead}")

    @property
    def torch_device(self) -> torch.device:
        return parse_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return self.dtype or default_dtype(self.torch_device)


@dataclass
class Stages:
    """The stages `build_stages` was asked for (the others None)."""

    frontend: Optional[FrontendStage] = None
    gpt: Optional[GPTStage] = None
    vocoder: Optional[VocoderStage] = None

    def close(self) -> None:
        for stage in (self.gpt, self.vocoder, self.frontend):
            if stage is not None:
                stage.close()


def build_stages(checkpoint: Union[CheckpointInfo, str, Path], options: StageOptions = StageOptions(),
                 only: tuple[str, ...] = STAGE_NAMES) -> Stages:
    """Builds the stages named in `only` for `checkpoint` (a `CheckpointInfo`, directory or hub id)."""
    unknown = set(only) - set(STAGE_NAMES)
    if unknown:
        raise OptionsError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGE_NAMES)}")
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else \
        CheckpointInfo.from_dir(checkpoint, require_weights=set(only) != {"frontend"})
    version = info.config.version
    paths = MODEL_STAGES.get(version)
    if paths is None:
        raise OptionsError(f"model version {version!r} is not supported; supported: {', '.join(MODEL_STAGES)}")
    built = Stages()
    try:
        for name in STAGE_NAMES:
            if name in only:
                setattr(built, name, _stage_class(paths, name, options.engine).from_checkpoint(info, options))
    except BaseException:
        built.close()
        raise
    return built


def _stage_class(entry: ModelStages, name: str, engine: str) -> type:
    if name != "gpt":
        return _import(getattr(entry, name))
    if engine not in entry.gpt:
        raise OptionsError(f"engine {engine!r} is not available for this model version; "
                           f"choose one of {', '.join(entry.gpt)}")
    return _import(entry.gpt[engine])


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
