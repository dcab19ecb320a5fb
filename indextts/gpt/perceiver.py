"""Perceiver resampler: a variable number of conformer frames -> a fixed set of latent vectors.

Learned latents cross-attend (depth times) to the projected context with the latents themselves
prepended to it, each attention followed by a GEGLU feed-forward; an RMSNorm closes the stack.
Parameter names follow the checkpoint (`layers.N.0.to_q`, `layers.N.1.0`, `norm.gamma`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64
DEPTH = 2


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(dim) * gamma (L2 normalisation, not a mean of squares with eps)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class GEGLU(nn.Module):
    """Second half gates the first: x * gelu(gate), exact (erf) GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(dim * mult * 2 / 3)
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))


class CrossAttention(nn.Module):
    """Latents attend to [latents, context]; no biases."""

    def __init__(self, dim: int, heads: int, head_dim: int = HEAD_DIM):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """latents: [B, N, D], context: [B, T, D], mask: [B, N + T] bool (valid keys) -> [B, N, D]."""
        b, n, _ = latents.shape
        kv_input = torch.cat([latents, context], dim=1)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q = self.to_q(latents)
        q, k, v = (t.view(b, t.size(1), self.heads, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, *, hd]
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, context_dim: int, num_latents: int, heads: int, ff_mult: int,
                 depth: int = DEPTH):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.proj_context = nn.Linear(context_dim, dim) if context_dim != dim else nn.Identity()
        self.layers = nn.ModuleList(
            nn.ModuleList([CrossAttention(dim, heads), feed_forward(dim, ff_mult)]) for _ in range(depth))
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """context: [B, T, C], context_mask: [B, T] bool (valid frames) -> latents [B, N, D]."""
        x = self.proj_context(context)
        latents = self.latents.unsqueeze(0).expand(x.size(0), -1, -1)
        mask = None
        if context_mask is not None:
            latent_mask = torch.ones(x.size(0), latents.size(1), dtype=torch.bool, device=x.device)
            mask = torch.cat([latent_mask, context_mask], dim=1)   # the latents are always valid keys
        for attn, ff in self.layers:
            latents = attn(latents, x, mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
