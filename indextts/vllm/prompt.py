"""IndexTTS prompts in the form vLLM takes them: a mixed-mode embeddings prompt.

`build` turns (conditioning latents, text ids) into a `VLLMPrompt`; `for_vllm` gives vLLM
its rendered form (`vllm.inputs.embeds_input`, an embeddings input in mixed mode):

- `prompt_embeds` [P + 1, D]: 32 conditioning latents (no position), then
  `text_embedding([0] + ids + [1]) + text_pos_embedding[0..L+1]`, then one row vLLM ignores
  (the start code is a real token there, embedded inside the model);
- `prompt_token_ids` `[1] * P + [8192]`: the original's fake HF input ids, which is what
  vLLM's repetition penalty then covers (see `indextts/vllm/model.py`);
- `is_token_ids` `[False] * P + [True]`.

The two text tables are read from gpt.pth once and kept on the CPU (12001 + 602 rows, about
60 MB in float32 for IndexTTS-1.5); the model on the GPU does not carry them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from indextts.checkpoint import CheckpointInfo, read_state_dict
from indextts.config import GPTConfig
from indextts.errors import CheckpointError, TextError, VoiceError


@dataclass(frozen=True, eq=False)
class VLLMPrompt:
    """One request's prompt; `embeds` [P, D] float32 is also the latent pass's prefix."""

    embeds: torch.Tensor
    start_code: int

    @property
    def length(self) -> int:
        """P: the embedding rows before the start code."""
        return self.embeds.size(0)

    def for_vllm(self, dtype: torch.dtype) -> dict:
        """This prompt as vLLM's rendered engine input (`vllm.inputs.embeds_input`, mixed mode),
        the embeddings in `dtype`."""
        from indextts.vllm.multimodal import render

        return render(self.embeds.to(dtype), self.start_code)


class PromptBuilder:
    """Builds `VLLMPrompt`s; holds the text embedding and text position tables (CPU, float32)."""

    def __init__(self, cfg: GPTConfig, text_embedding: torch.Tensor, text_positions: torch.Tensor):
        want = {"text_embedding.weight": (cfg.text_vocab_size, cfg.model_dim),
                "text_pos_embedding.emb.weight": (cfg.text_positions, cfg.model_dim)}
        for (name, shape), table in zip(want.items(), (text_embedding, text_positions)):
            if tuple(table.shape) != shape:
                raise CheckpointError(f"{name} has shape {list(table.shape)}, config.yaml implies {list(shape)}",
                                      mismatched=[(name, tuple(table.shape), shape)])
        self.cfg = cfg
        self.text_embedding = text_embedding.float()
        self.text_positions = text_positions.float()

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo) -> "PromptBuilder":
        sd = read_state_dict(info.gpt_path, ("model",))
        missing = [k for k in ("text_embedding.weight", "text_pos_embedding.emb.weight") if k not in sd]
        if missing:
            raise CheckpointError(f"{info.gpt_path.name} lacks {', '.join(missing)}", missing=missing)
        return cls(info.config.gpt, sd["text_embedding.weight"].clone(),
                   sd["text_pos_embedding.emb.weight"].clone())

    def text_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """[start] + ids + [stop] as int64 [L + 2]; start/stop ids inside the text are dropped
        first, as the original does."""
        cfg = self.cfg
        t = torch.as_tensor(list(ids), dtype=torch.long).reshape(-1)
        t = t[(t != cfg.start_text_token) & (t != cfg.stop_text_token)]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= cfg.text_vocab_size):
            raise TextError(f"text ids must lie in [0, {cfg.text_vocab_size}); got {int(t.min())}..{int(t.max())}. "
                            "Was the text tokenized with this checkpoint's bpe.model?")
        if t.numel() + 2 > cfg.text_positions:
            raise TextError(f"segment has {t.numel()} text tokens; this checkpoint takes at most "
                            f"{cfg.text_positions - 2} per segment. Split the text into shorter segments")
        return torch.cat([t.new_tensor([cfg.start_text_token]), t, t.new_tensor([cfg.stop_text_token])])

    def build(self, cond_latents: torch.Tensor, ids: Sequence[int]) -> VLLMPrompt:
        """cond_latents: [1, 32, D] (or [32, D]); ids: BPE ids of one segment [L]."""
        cfg = self.cfg
        cond = cond_latents.detach().to("cpu", torch.float32)
        if cond.dim() == 3 and cond.size(0) == 1:
            cond = cond[0]
        want = (cfg.condition.num_latents, cfg.model_dim)
        if tuple(cond.shape) != want:
            raise VoiceError(f"conditioning latents must be [1, {want[0]}, {want[1]}], got "
                             f"{list(cond_latents.shape)}; compute them with this checkpoint's get_conditioning")
        t = self.text_ids(ids)
        text = self.text_embedding[t] + self.text_positions[:t.numel()]
        return VLLMPrompt(torch.cat([cond, text]), cfg.start_mel_token)
