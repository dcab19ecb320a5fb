"""IndexTTS prompts in the form vLLM takes them: placeholder ids plus one "voice" item.

`build` turns (conditioning latents, text ids) into a `VLLMPrompt`; `for_vllm` gives vLLM
its rendered form (`indextts.vllm.multimodal.render`):

- rows [P, D] float32: 32 conditioning latents (no position), then
  `text_embedding([0] + ids + [1]) + text_pos_embedding[0..L+1]`, as the "voice" item's data;
- `prompt_token_ids` `[1] * P + [8192]`: the original's fake HF input ids, which is what
  vLLM's repetition penalty then covers (see `indextts/vllm/model.py`); the start code 8192 is
  a real token, embedded inside the model.

The two text tables are read from gpt.pth once and kept on the CPU (12001 + 602 rows, about
60 MB in float32 for IndexTTS-1.5); the model on the GPU does not carry them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from indextts.checkpoint import CheckpointInfo, read_state_dict
from indextts.config import GPTConfig
from indextts.errors import CheckpointError, VoiceError
from indextts.gpt.model import bounded_text_ids
from indextts.vllm.multimodal import content_hash, render


@dataclass(frozen=True, eq=False)
class VLLMPrompt:
    """One request's prompt; `embeds` [P, D] float32 (CPU) is also the latent pass's prefix.

    `identity`: the rows' hash for vLLM's encoder and prefix caches, taken over what they are
    made of (the float32 conditioning latents and the bounded text ids), not over the rows: the
    rows are a function of those and of the builder's tables, which are fixed for an engine, so
    equal inputs give equal rows and share the hash. A third of the bytes of the rows (32 of ~95
    rows, plus the ids), and the hash runs once per request next to vLLM's busy processes."""

    embeds: torch.Tensor
    start_code: int
    identity: str

    @property
    def length(self) -> int:
        """P: the embedding rows before the start code."""
        return self.embeds.size(0)

    def for_vllm(self) -> dict:
        """This prompt as vLLM's rendered engine input: one "voice" item (float32 rows; the
        model casts them on its device) and the placeholder ids (`indextts.vllm.multimodal`)."""
        return render(self.embeds, self.start_code, self.identity)


class PromptBuilder:
    """Builds `VLLMPrompt`s; holds the text embedding and text position tables (CPU, float32).

    Prompts are built with NumPy, not torch: this runs once per request in the process that
    talks to vLLM, next to vLLM's busy engine processes, and torch's CPU ops above a few
    thousand elements go through its OpenMP pool, whose threads spin against the engine core
    and delay admission (figures in docs/benchmarks.md). NumPy's copies run on the calling
    thread."""

    def __init__(self, cfg: GPTConfig, text_embedding: torch.Tensor, text_positions: torch.Tensor):
        want = {"text_embedding.weight": (cfg.text_vocab_size, cfg.model_dim),
                "text_pos_embedding.emb.weight": (cfg.text_positions, cfg.model_dim)}
        for (name, shape), table in zip(want.items(), (text_embedding, text_positions)):
            if tuple(table.shape) != shape:
                raise CheckpointError(f"{name} has shape {list(table.shape)}, config.yaml implies {list(shape)}",
                                      mismatched=[(name, tuple(table.shape), shape)])
        self.cfg = cfg
        self.text_embedding = text_embedding.detach().float().cpu().numpy()
        self.text_positions = text_positions.detach().float().cpu().numpy()

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo) -> "PromptBuilder":
        sd = read_state_dict(info.gpt_path, ("model",))
        missing = [k for k in ("text_embedding.weight", "text_pos_embedding.emb.weight") if k not in sd]
        if missing:
            raise CheckpointError(f"{info.gpt_path.name} lacks {', '.join(missing)}", missing=missing)
        return cls(info.config.gpt, sd["text_embedding.weight"].clone(),
                   sd["text_pos_embedding.emb.weight"].clone())

    def build(self, cond_latents: torch.Tensor, ids: Sequence[int]) -> VLLMPrompt:
        """cond_latents: [1, 32, D] (or [32, D]); ids: BPE ids of one segment [L]."""
        cfg = self.cfg
        want = (cfg.condition.num_latents, cfg.model_dim)
        shape = tuple(cond_latents.shape)
        if shape[-2:] != want or len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
            raise VoiceError(f"conditioning latents must be [1, {want[0]}, {want[1]}], got "
                             f"{list(shape)}; compute them with this checkpoint's get_conditioning")
        cond = cond_latents.detach().reshape(want).cpu()
        cond = cond.numpy() if cond.dtype == torch.float32 else cond.float().numpy()
        t = np.asarray(bounded_text_ids(cfg, ids), dtype=np.int64)
        rows = np.empty((want[0] + t.size, cfg.model_dim), dtype=np.float32)
        rows[:want[0]] = cond
        np.add(self.text_embedding[t], self.text_positions[:t.size], out=rows[want[0]:])
        identity = content_hash(torch.from_numpy(cond), torch.from_numpy(t))
        return VLLMPrompt(torch.from_numpy(rows), cfg.start_mel_token, identity)
