"""The pipeline's stages (frontend, GPT on PyTorch or vLLM, vocoder) and the builder that picks
them by model version. See `base` for the contracts and `builder` for the table."""

from indextts.stages.base import FrontendStage, GPTStage, Stage, VocoderStage
from indextts.stages.builder import MODEL_STAGES, StageOptions, Stages, build_stages

__all__ = ["FrontendStage", "GPTStage", "MODEL_STAGES", "Stage", "StageOptions", "Stages", "VocoderStage",
           "build_stages"]
