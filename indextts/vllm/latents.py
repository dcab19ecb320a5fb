"""The latent pass run incrementally, chunk by chunk, inside vLLM's worker (`indextts.vllm.worker`).

The vocoder's latents come from the original's teacher-forced pass (`IndexTTSGPTForCausalLM.
teacher_forced_latents` runs it over a whole segment). That pass is causal, so a chunk's latents
depend only on the prompt and the codes up to the chunk: `LatentStreams` keeps, per streaming
request, each layer's keys and values of the rows already run, and runs only the new rows of each
chunk. One call serves many requests: the linear layers run once over all new rows packed
together, attention runs per request over its own cache. The caches live beside vLLM's paged
cache, not in it (vLLM's cache holds the decoding's keys, which sit at other mel positions), and
grow by doubling; a state is dropped when its request's last chunk is computed or its request
is released, and the least recently used goes when more than `max_states` are open.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MIN_CAPACITY = 128                 # rows a new cache holds before it first grows


class LayerKV:
    """One layer's keys and values of one sequence, `[H, rows, hd]`, grown as rows arrive."""

    def __init__(self):
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: `[H, T, hd]` of the next T rows -> every row's keys and values so far."""
        need = self.length + k.shape[1]
        if self.k is None or need > self.k.shape[1]:
            capacity = max(need, MIN_CAPACITY, 2 * (0 if self.k is None else self.k.shape[1]))
            grown_k, grown_v = (k.new_empty(k.shape[0], capacity, k.shape[2]) for _ in range(2))
            if self.k is not None:
                grown_k[:, :self.length], grown_v[:, :self.length] = self.k[:, :self.length], self.v[:, :self.length]
            self.k, self.v = grown_k, grown_v
        self.k[:, self.length:need], self.v[:, self.length:need] = k, v
        self.length = need
        return self.k[:, :need], self.v[:, :need]


class LatentState:
    """One request's pass so far: `fed` codes have their latents; the last of them is the next input."""

    def __init__(self, layers: int):
        self.layers = [LayerKV() for _ in range(layers)]
        self.fed = 0
        self.last_code: Optional[int] = None
        self.used = time.monotonic()


class LatentStreams:
    """Open incremental passes of one model, by request key (in the worker; one thread)."""

    def __init__(self, model, max_states: int = 256):
        self.model = model
        self.max_states = max_states
        self.states: "OrderedDict[str, LatentState]" = OrderedDict()

    def release(self, keys) -> None:
        for key in keys:
            self.states.pop(key, None)

    @torch.inference_mode()
    def extend(self, items: list[tuple[str, Optional[torch.Tensor], list[int], bool]]) -> list[torch.Tensor]:
        """items: (request key, prompt embeddings [P, D] on a request's first call else None,
        its next codes, whether they are its last) -> their latents [n, D] per item."""
        model = self.model
        dec, device, dtype = model.decoder, model.mel_head.weight.device, model.mel_head.weight.dtype
        out: list[Optional[torch.Tensor]] = [None] * len(items)
        rows, work = [], []
        for i, (key, embeds, codes, _) in enumerate(items):
            state = self._state(key, embeds is not None)
            if not codes:
                out[i] = torch.zeros(0, model.config.hidden_size, device=device, dtype=dtype)
                continue
            ids = ([model.config.start_mel_token] if state.fed == 0 else [state.last_code]) + list(codes[:-1])
            positions = torch.arange(state.fed, state.fed + len(codes), device=device)
            x = dec.mel_embedding(torch.tensor(ids, dtype=torch.long, device=device)) + dec.mel_pos_embedding(positions)
            if state.fed == 0:
                x = torch.cat([embeds.to(device=device, dtype=dtype), x])
            state.fed, state.last_code = state.fed + len(codes), int(codes[-1])
            rows.append(x)
            work.append((i, state, len(codes)))
        if work:
            hidden = self._run(torch.cat(rows), [(s, x.shape[0]) for (_, s, _), x in zip(work, rows)])
            end = 0
            for (i, _, n), x in zip(work, rows):
                end += x.shape[0]
                out[i] = hidden[end - n:end]
        for key, _, _, last in items:
            if last:
                self.states.pop(key, None)
        return out

    def _state(self, key: str, first: bool) -> LatentState:
        if first:
            if key in self.states:
                raise ValueError(f"latent stream {key} is already open")
            while len(self.states) >= self.max_states:
                old, _ = self.states.popitem(last=False)
                logger.warning("more than %d latent streams open: dropped %s (least recently used)",
                               self.max_states, old)
            self.states[key] = LatentState(len(self.model.decoder.h))
        state = self.states.get(key)
        if state is None:
            raise KeyError(f"latent stream {key} is not open (released, dropped, or the engine restarted)")
        self.states.move_to_end(key)
        state.used = time.monotonic()
        return state

    def _run(self, x: torch.Tensor, spans: list[tuple[LatentState, int]]) -> torch.Tensor:
        """x: the new rows of every request, packed `[N, D]`; spans: (state, rows) in order -> `[N, D]`."""
        dec = self.model.decoder
        for layer, block in enumerate(dec.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x))[0].chunk(3, dim=-1)
            parts, a = [], 0
            for state, t in spans:
                qi, ki, vi = (z[a:a + t].view(t, attn.heads, attn.head_dim).transpose(0, 1) for z in (q, k, v))
                keys, values = state.layers[layer].append(ki, vi)
                # row j of the new ones (absolute row length - t + j) sees every row up to itself
                mask = torch.ones(t, keys.shape[1], dtype=torch.bool, device=x.device).tril(keys.shape[1] - t)
                o = F.scaled_dot_product_attention(qi, keys, values, attn_mask=mask, scale=attn.head_dim ** -0.5)
                parts.append(o.transpose(0, 1).reshape(t, -1))
                a += t
            x = x + attn.c_proj(torch.cat(parts))[0]
            x = x + block.mlp(block.ln_2(x))
        return dec.final_norm(dec.ln_f(x))
