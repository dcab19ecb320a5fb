"""UnifiedVoice: the IndexTTS 1.0/1.5 GPT (math only; decoding lives in `generation.py`).

A GPT-2 decoder over one sequence `[32 conditioning latents | text | mel codes]`:

- conditioning latents come from the reference mel (Conformer -> Perceiver) and carry no
  position embedding;
- text is `text_embedding([0] + ids + [1]) + text_pos_embedding[0..L+1]`;
- mel codes are `mel_embedding(code) + mel_pos_embedding[position]`; which position a code gets
  is the caller's business (generation and the latent pass differ, see `generation.py`);
- GPT-2's own token and position embeddings do not exist; hidden states go through GPT-2's
  `ln_f` and then a second LayerNorm `final_norm`; `mel_head` maps those to code logits.

State-dict names and shapes are exactly those of the official `gpt.pth` (GPT-2 `Conv1D`
weights stored `[in, out]`). The model holds no per-request state: the KV cache is an argument.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from indextts.config import GPTConfig
from indextts.errors import ConfigError, TextError
from indextts.gpt.conformer import ConformerEncoder
from indextts.gpt.kv_cache import KVCache
from indextts.gpt.perceiver import PerceiverResampler

TextIds = Union[Sequence[int], torch.Tensor]   # BPE ids of one segment, [L], no start/stop


def bounded_text_ids(cfg: GPTConfig, text_ids: TextIds) -> list[int]:
    """[start] + ids + [stop]; any start/stop ids inside the text are dropped first (the
    original does this for the prompt). Plain Python: the vLLM engine builds prompts with it in
    a process where small torch CPU ops are costly (`indextts.vllm.prompt.PromptBuilder`)."""
    flat = text_ids.reshape(-1).tolist() if isinstance(text_ids, torch.Tensor) else list(text_ids)
    ids = [int(i) for i in flat if i != cfg.start_text_token and i != cfg.stop_text_token]
    if ids and (min(ids) < 0 or max(ids) >= cfg.text_vocab_size):
        raise TextError(f"text ids must lie in [0, {cfg.text_vocab_size}); got {min(ids)}..{max(ids)}; "
                        "was the text tokenized with this checkpoint's bpe.model?")
    if len(ids) + 2 > cfg.text_positions:
        raise TextError(f"segment has {len(ids)} text tokens; this checkpoint takes at most "
                        f"{cfg.text_positions - 2} per segment. Split the text into shorter segments")
    return [cfg.start_text_token, *ids, cfg.stop_text_token]

MEL_BINS = 100
LAYER_NORM_EPS = 1e-5

_ACTIVATIONS = {
    "gelu_new": lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


class Conv1D(nn.Module):
    """GPT-2's linear layer: y = x @ W + b with W stored [in, out] (transposed nn.Linear)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], out.size(-1))


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(dim, 3 * dim)   # output q | k | v, heads contiguous in each
        self.c_proj = Conv1D(dim, dim)

    def forward(self, x: torch.Tensor, layer: int, cache: Optional[KVCache],
                mask: Optional[torch.Tensor], is_causal: bool) -> torch.Tensor:
        """x: [B, T, D]; mask: [B|1, 1, T, S] bool (True = attend) or None -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
        if cache is not None:
            k, v = cache.write(layer, k, v)     # [B, H, S, hd], S = past + T
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, d))


class GPT2MLP(nn.Module):
    def __init__(self, dim: int, activation: str):
        super().__init__()
        self.c_fc = Conv1D(dim, 4 * dim)
        self.c_proj = Conv1D(4 * dim, dim)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int, activation: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = GPT2MLP(dim, activation)

    def forward(self, x, layer, cache, mask, is_causal):
        x = x + self.attn(self.ln_1(x), layer, cache, mask, is_causal)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 blocks + `ln_f`, without token/position embeddings (IndexTTS deletes them)."""

    def __init__(self, dim: int, layers: int, heads: int, activation: str):
        super().__init__()
        self.h = nn.ModuleList(GPT2Block(dim, heads, activation) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B, T, D] inputs_embeds; cache: filled with `past` positions, extended by T;
        key_valid: [B, past + T] bool of real (non-padding) keys or None -> [B, T, D] after ln_f."""
        past = 0 if cache is None else cache.length
        mask, is_causal = attention_mask(past, x.size(1), key_valid, x.device)
        for i, block in enumerate(self.h):
            x = block(x, i, cache, mask, is_causal)
        if cache is not None:
            cache.advance(x.size(1))
        return self.ln_f(x)


def attention_mask(past: int, t: int, key_valid: Optional[torch.Tensor],
                   device: torch.device) -> tuple[Optional[torch.Tensor], bool]:
    """Causal (and padding) mask for T new queries after `past` cached keys.

    Returns (mask [B|1, 1, T, past + T] bool or None, is_causal). A left-padding query may see
    only itself, so that no softmax row is empty; real queries never see padding keys.
    """
    if key_valid is None:
        if t == 1:
            return None, False
        if past == 0:
            return None, True
    keys = torch.arange(past + t, device=device)
    queries = past + torch.arange(t, device=device)
    causal = keys[None, :] <= queries[:, None]                  # [T, S]
    if key_valid is None:
        return causal[None, None], False
    own = keys[None, :] == queries[:, None]
    allowed = causal[None] & (key_valid[:, None, :] | own[None])  # [B, T, S]
    return allowed[:, None], False


class LearnedPositions(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.emb(positions)


class Conditioner(nn.Module):
    """The voice half of UnifiedVoice (conformer + perceiver): `get_conditioning(mel) -> [B, 32, D]`.

    Also used alone by engines whose GPT lives elsewhere (vLLM); the submodule names are the
    checkpoint's, so it loads the `conditioning_encoder.*` and `perceiver_encoder.*` keys of gpt.pth.
    """

    PREFIXES = ("conditioning_encoder.", "perceiver_encoder.")

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        cond = cfg.condition
        self.conditioning_encoder = ConformerEncoder(cond, MEL_BINS)
        self.perceiver_encoder = PerceiverResampler(cfg.model_dim, cond.output_size, cond.num_latents,
                                                    cond.attention_heads, cond.perceiver_mult)

    def post_load(self) -> None:
        """Called by the checkpoint loaders after the strict load. Nothing to rebuild: there are
        no non-persistent buffers (attention masks are made per call; the conformer's sinusoid
        table is stored in gpt.pth). Loaded weights serve inference, so they are frozen: calls
        made outside `torch.no_grad()` then build no autograd graph."""
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.perceiver_encoder.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.perceiver_encoder.latents.dtype

    def get_conditioning(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """mel: [B, 100, T] log-mel of the reference, lengths: [B] valid frames (default T)
        -> conditioning latents [B, 32, D]."""
        if lengths is None:
            lengths = torch.full((mel.size(0),), mel.size(-1), dtype=torch.long, device=mel.device)
        hidden, mask = self.conditioning_encoder(mel.transpose(1, 2), lengths)   # [B, T', C], [B, 1, T']
        return self.perceiver_encoder(hidden, mask.squeeze(1))


class UnifiedVoice(Conditioner):
    """The IndexTTS GPT. Submodule names are the checkpoint's; see the module docstring."""

    def __init__(self, cfg: GPTConfig):
        if cfg.activation_function not in _ACTIVATIONS:
            raise ConfigError(f"gpt.activation_function {cfg.activation_function!r} is not supported; "
                              f"use one of {sorted(_ACTIVATIONS)}")
        super().__init__(cfg)   # conditioning_encoder, perceiver_encoder: first, as in gpt.pth
        d = cfg.model_dim
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, d)
        self.mel_embedding = nn.Embedding(cfg.number_mel_codes, d)
        self.gpt = GPT2(d, cfg.layers, cfg.heads, cfg.activation_function)
        self.mel_pos_embedding = LearnedPositions(cfg.mel_positions, d)
        self.text_pos_embedding = LearnedPositions(cfg.text_positions, d)
        self.final_norm = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, cfg.text_vocab_size)   # unused at inference, kept for strict loading
        self.mel_head = nn.Linear(d, cfg.number_mel_codes)
        for emb in (self.text_embedding, self.mel_embedding):
            nn.init.normal_(emb.weight, std=0.02)

    # -- embeddings -------------------------------------------------------------------------

    def text_ids_with_bounds(self, text_ids: TextIds) -> torch.Tensor:
        """`bounded_text_ids` as int64 [L + 2] on the model's device."""
        return torch.tensor(bounded_text_ids(self.cfg, text_ids), dtype=torch.long, device=self.device)

    def embed_text(self, text_ids: TextIds) -> torch.Tensor:
        """BPE ids [L] (no start/stop) -> text embeddings with text positions [L + 2, D]."""
        ids = self.text_ids_with_bounds(text_ids)
        return self.text_embedding(ids) + self.text_pos_embedding(torch.arange(ids.numel(), device=ids.device))

    def embed_mel(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """codes: [B, T] int, positions: [B, T] or [T] mel position rows -> [B, T, D]."""
        return self.mel_embedding(codes) + self.mel_pos_embedding(positions)

    def prompt_embeddings(self, cond_latents: torch.Tensor, text_ids: TextIds) -> torch.Tensor:
        """cond_latents: [1, 32, D], text ids [L] -> prompt prefix [1, 32 + L + 2, D]
        (conditioning without positions, then text); the start code is not included."""
        text = self.embed_text(text_ids)
        return torch.cat([cond_latents.to(device=text.device, dtype=text.dtype), text.unsqueeze(0)], dim=1)

    # -- transformer ------------------------------------------------------------------------

    def forward(self, embeds: torch.Tensor, cache: Optional[KVCache] = None,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """embeds: [B, T, D] -> final-normed hidden states [B, T, D] (the "latents").

        With `cache`, the T inputs follow its filled positions and are appended to it.
        `key_valid` ([B, past + T] bool) marks real keys under left padding; by default the
        cache's own record is used."""
        if key_valid is None and cache is not None:
            key_valid = cache.valid_keys(cache.length + embeds.size(1))
        return self.final_norm(self.gpt(embeds, cache, key_valid))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden [..., D] -> mel code logits [..., number_mel_codes]."""
        return self.mel_head(hidden)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty KV cache for `batch` rows of up to `capacity` positions."""
        return KVCache.empty(self.cfg.layers, batch, self.cfg.heads, self.cfg.head_dim, capacity,
                             dtype=self.dtype, device=self.device)

