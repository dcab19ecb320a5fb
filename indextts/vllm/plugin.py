"""vLLM plugin entry point: `vllm.general_plugins` -> `indextts.vllm.plugin:register`.

vLLM calls `register()` in every process it starts (the API process, the engine core, each
worker), possibly more than once per process; it is idempotent and cheap. It registers, through
vLLM's documented extension points only:

- the model architecture `IndexTTSGPTForCausalLM` (`ModelRegistry.register_model`, lazily by
  import path so that registering imports no model code);
- the config format "indextts" (`register_config_parser`): config.yaml -> HF-style config;
- the load format "indextts" (`register_model_loader`): weights from the official gpt.pth.

Use: `vllm.AsyncEngineArgs(model=<checkpoint dir>, config_format="indextts",
load_format="indextts", ...)`; `indextts.vllm.engine.VLLMEngine` does this for you.
"""

from __future__ import annotations

import threading

from indextts.vllm.names import ARCHITECTURE   # re-exported: `plugin.ARCHITECTURE` is public

MODEL_CLASS = "indextts.vllm.model:IndexTTSGPTForCausalLM"

_lock = threading.Lock()
_registered = False


def register() -> None:
    """Registers the IndexTTS model, config format and load format with vLLM (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        from vllm import ModelRegistry
        from vllm.model_executor.model_loader import register_model_loader
        from vllm.transformers_utils.config import get_config_parser, register_config_parser

        from indextts.vllm.hf_config import CONFIG_FORMAT, IndexTTSConfigParser
        from indextts.vllm.loader import LOAD_FORMAT, IndexTTSModelLoader

        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
        try:
            get_config_parser(CONFIG_FORMAT)
        except ValueError:
            register_config_parser(CONFIG_FORMAT)(IndexTTSConfigParser)
        register_model_loader(LOAD_FORMAT)(IndexTTSModelLoader)
        _registered = True
