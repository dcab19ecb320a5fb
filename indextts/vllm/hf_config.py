"""The Hugging Face-style config vLLM needs, made from the checkpoint's own `config.yaml`.

vLLM sizes its KV cache and validates requests from a `transformers.PretrainedConfig`. The
official IndexTTS directory has no `config.json`, and users pass only that directory, so we do
not write one anywhere: `IndexTTSConfigParser` is registered as vLLM config format `"indextts"`
(`vllm.transformers_utils.config.register_config_parser`, the documented hook for models whose
config is not HF's), and turns `config.yaml` into `IndexTTSGPTConfig` in memory.

Fields vLLM reads, and why they hold these values:

- `vocab_size` = number_mel_codes (8194): the sampled vocabulary is the mel codes only. The
  prompt's placeholder ids (1 and the start code 8192) lie inside it, so vLLM accepts them.
- `bos_token_id` / `eos_token_id` = start / stop code. An eos outside the vocabulary crashes
  vLLM's sampler with a device-side assert (measured on the GPU machine).
- `max_position_embeddings`: the longest sequence, 32 latents + max text + 2 + start + max codes.
- `rope_parameters.mrope_section`: switches vLLM's M-RoPE position path on (`uses_mrope`), which
  is how every request gets its own mel positions (see `indextts/vllm/model.py`). No rotary
  embedding is ever computed; the section sizes are never read by our model.
- `head_dim`: the model's real head size (vLLM reads it as the model's head size).
- `attention_head_size`: read by our model only, not by vLLM: the head size our `Attention`
  layers are built with (vLLM sizes the KV cache from the layers), `head_dim` rounded up to a
  multiple of 32. vLLM's CPU attention kernels take head sizes from 32 up (0.27.1
  `CPUAttentionBackend.get_supported_head_sizes`; head size 16 fails with "Unsupported CPU
  attention configuration: head_dim=16"); the real checkpoints have 64 and are
  unaffected, the tiny golden checkpoint has 16 and is zero-padded (exact: zero dimensions add
  nothing to q.k, and the padded output dimensions are dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PretrainedConfig
from vllm.transformers_utils.config_parser_base import ConfigParserBase

from indextts.config import IndexTTSConfig
from indextts.vllm.names import ARCHITECTURE

CONFIG_FORMAT = "indextts"
NUM_COND_LATENTS = 32
LAYER_NORM_EPS = 1e-5
_HEAD_ALIGN = 32


class IndexTTSGPTConfig(PretrainedConfig):
    """UnifiedVoice's GPT as vLLM sees it (see the module docstring for the fields)."""

    model_type = "indextts_gpt"
    ignore_keys_at_rope_validation = {"mrope_section"}     # transformers 5 would warn about it

    def __init__(self, hidden_size: int = 1280, num_hidden_layers: int = 24, num_attention_heads: int = 20,
                 activation_function: str = "gelu_new", number_mel_codes: int = 8194,
                 start_mel_token: int = 8192, stop_mel_token: int = 8193, max_mel_tokens: int = 800,
                 max_text_tokens: int = 600, number_text_tokens: int = 12000,
                 gpt_checkpoint: str = "gpt.pth", **kwargs: Any):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.attention_head_size = -(-self.head_dim // _HEAD_ALIGN) * _HEAD_ALIGN
        self.intermediate_size = 4 * hidden_size
        self.activation_function = activation_function
        self.layer_norm_epsilon = LAYER_NORM_EPS
        self.vocab_size = number_mel_codes
        self.number_mel_codes = number_mel_codes
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token
        self.max_mel_tokens = max_mel_tokens
        self.max_text_tokens = max_text_tokens
        self.number_text_tokens = number_text_tokens
        self.num_cond_latents = NUM_COND_LATENTS
        # rows of the official position tables (see indextts.config.GPTConfig)
        self.mel_positions = max_mel_tokens + 3
        self.text_positions = max_text_tokens + 2
        self.max_position_embeddings = NUM_COND_LATENTS + self.text_positions + 1 + max_mel_tokens
        self.gpt_checkpoint = gpt_checkpoint
        kwargs.setdefault("architectures", [ARCHITECTURE])
        kwargs.setdefault("rope_parameters", {"rope_type": "default",
                                              "mrope_section": [self.head_dim // 2, 0, 0]})
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs.setdefault("dtype", "float32")
        super().__init__(bos_token_id=start_mel_token, eos_token_id=stop_mel_token, **kwargs)

    @classmethod
    def from_indextts(cls, cfg: IndexTTSConfig) -> "IndexTTSGPTConfig":
        g = cfg.gpt
        return cls(hidden_size=g.model_dim, num_hidden_layers=g.layers, num_attention_heads=g.heads,
                   activation_function=g.activation_function, number_mel_codes=g.number_mel_codes,
                   start_mel_token=g.start_mel_token, stop_mel_token=g.stop_mel_token,
                   max_mel_tokens=g.max_mel_tokens, max_text_tokens=g.max_text_tokens,
                   number_text_tokens=g.number_text_tokens, gpt_checkpoint=cfg.gpt_checkpoint)


class IndexTTSConfigParser(ConfigParserBase):
    """vLLM config format "indextts": `model` is an official IndexTTS checkpoint directory."""

    def parse(self, model: str | Path, trust_remote_code: bool, revision: str | None = None,
              code_revision: str | None = None, **kwargs: Any) -> tuple[dict, PretrainedConfig]:
        config = IndexTTSGPTConfig.from_indextts(IndexTTSConfig.from_yaml(Path(model) / "config.yaml"))
        return config.to_dict(), config
