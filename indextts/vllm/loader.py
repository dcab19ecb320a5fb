"""vLLM load format "indextts": weights straight from the official `gpt.pth`.

Registered with `vllm.model_executor.model_loader.register_model_loader`, vLLM's documented hook
for checkpoint formats it does not know. vLLM's default loader looks for `*.safetensors` /
`*.bin` files holding flat state dicts; `gpt.pth` may nest its state dict under `model`, and
holds the conditioning encoder too. Reading goes through `indextts.checkpoint.read_state_dict`
(memory-mapped, tensors only) and strictness through the model's `load_weights`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from vllm.config import ModelConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from indextts.checkpoint import read_state_dict

LOAD_FORMAT = "indextts"


class IndexTTSModelLoader(BaseModelLoader):
    """`model_config.model` is the checkpoint directory; the file name comes from config.yaml."""

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to fetch: `indextts.checkpoint.CheckpointInfo` resolved the directory already."""

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        path = Path(model_config.model) / model_config.hf_config.gpt_checkpoint
        model.load_weights(read_state_dict(path, ("model",)).items())
