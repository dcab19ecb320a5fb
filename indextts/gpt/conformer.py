"""Conformer encoder of the reference mel (the first half of IndexTTS's conditioning).

A WeNet-style Conformer as IndexTTS 1.0/1.5 configure it: conv2d subsampling by two in time,
relative-position self-attention *without* the relative shift (the original removed it), a
convolution module (GLU, depthwise conv k=15, LayerNorm, SiLU), a SiLU feed-forward, pre-norm
blocks with a final LayerNorm per block, and one LayerNorm after the stack. No macaron
feed-forward, no dropout (inference only).

Parameter names follow the checkpoint (`embed.conv.0`, `encoders.N.self_attn.linear_pos`, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from indextts.config import ConditioningConfig
from indextts.errors import AudioError, ConfigError

# The stored sinusoid table has 5000 rows; it bounds the subsampled reference length.
MAX_POSITIONS = 5000
CONV_KERNEL = 15


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """The classic Transformer table: [1, length, dim], sin on even and cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


class RelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(dim) and hands out the first T rows of the sinusoid table."""

    def __init__(self, dim: int, max_len: int = MAX_POSITIONS):
        super().__init__()
        self.xscale = math.sqrt(dim)
        self.register_buffer("pe", sinusoid_table(max_len, dim))  # stored in gpt.pth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, T, D] -> (x * sqrt(D) [B, T, D], pos_emb [1, T, D])
        return x * self.xscale, self.pe[:, :x.size(1)]


class Conv2dSubsampling2(nn.Module):
    """Conv2d(1 -> D, k3, s2) + ReLU over (time, mel), then a linear map of the flattened bands."""

    def __init__(self, in_bins: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, dim, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(dim * ((in_bins - 1) // 2), dim))
        self.pos_enc = RelPositionalEncoding(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x: [B, T, bins], mask: [B, 1, T] bool -> (x [B, T', D], pos_emb [1, T', D], mask [B, 1, T'])
        with T' = (T - 1) // 2."""
        x = self.conv(x.unsqueeze(1))                       # [B, D, T', F']
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        x, pos_emb = self.pos_enc(x)
        return x, pos_emb, mask[:, :, 2::2]


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with learned biases u/v on a relative-position term
    (Transformer-XL's matrices a+c and b+d, minus the shift)."""

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.heads, self.head_dim)   # [B, T, H, hd]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D], mask: [B, 1, T] bool (valid keys), pos_emb: [1, T, D] -> [B, T, D]."""
        q = self._split(self.linear_q(x))
        k = self._split(self.linear_k(x)).transpose(1, 2)        # [B, H, T, hd]
        v = self._split(self.linear_v(x)).transpose(1, 2)
        p = self._split(self.linear_pos(pos_emb)).transpose(1, 2)  # [1, H, T, hd]
        q_u = (q + self.pos_bias_u).transpose(1, 2)              # [B, H, T, hd]
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.head_dim)
        invalid = ~mask.unsqueeze(1)                             # [B, 1, 1, T]
        attn = scores.masked_fill(invalid, -math.inf).softmax(dim=-1).masked_fill(invalid, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(x.shape)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (same padding), LayerNorm, SiLU, pointwise conv."""

    def __init__(self, dim: int, kernel_size: int = CONV_KERNEL):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D], mask: [B, 1, T] bool (valid frames) -> [B, T, D]; padded frames are zero."""
        x = x.transpose(1, 2).masked_fill(~mask, 0.0)             # [B, D, T]
        # The original masks only before pointwise_conv1, whose bias then leaks into the
        # depthwise conv at the edge of a padded row. Masking again after the GLU makes a padded
        # row equal to the same reference alone (unpadded rows are unaffected either way).
        x = F.glu(self.pointwise_conv1(x), dim=1).masked_fill(~mask, 0.0)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(~mask, 0.0)
        return x.transpose(1, 2)


class ConformerBlock(nn.Module):
    """Pre-norm: x += attn; x += conv; x += ff; then norm_final."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = FeedForward(dim, hidden)
        self.conv_module = ConvolutionModule(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.norm_mha = nn.LayerNorm(dim)
        self.norm_conv = nn.LayerNorm(dim)
        self.norm_final = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos_emb)
        x = x + self.conv_module(self.norm_conv(x), mask)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """Reference mel frames -> subsampled hidden frames.

    Only `input_layer: conv2d2` exists in the IndexTTS 1.0/1.5 checkpoints, so only that
    subsampling is implemented.
    """

    def __init__(self, cfg: ConditioningConfig, in_bins: int = 100):
        super().__init__()
        if cfg.input_layer != "conv2d2":
            raise ConfigError(f"conditioning input_layer {cfg.input_layer!r} is not supported (only 'conv2d2')")
        self.embed = Conv2dSubsampling2(in_bins, cfg.output_size)
        self.after_norm = nn.LayerNorm(cfg.output_size)
        self.encoders = nn.ModuleList(
            ConformerBlock(cfg.output_size, cfg.attention_heads, cfg.linear_units) for _ in range(cfg.num_blocks))

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: [B, T, bins] (time first), lengths: [B] valid frames ->
        (hidden [B, T', D], mask [B, 1, T'] bool) with T' = (T - 1) // 2."""
        rows = self.embed.pos_enc.pe.size(1)
        if (mel.size(1) - 1) // 2 >= rows:
            raise AudioError(f"reference audio too long: {mel.size(1)} mel frames; the conditioning encoder "
                             f"takes at most {2 * rows - 1} (about {2 * rows * 256 // 24000} s); use a shorter clip")
        frames = torch.arange(mel.size(1), device=mel.device)
        mask = (frames.unsqueeze(0) < lengths.to(mel.device).unsqueeze(1)).unsqueeze(1)  # [B, 1, T]
        x, pos_emb, mask = self.embed(mel, mask)
        for block in self.encoders:
            x = block(x, mask, pos_emb)
        return self.after_norm(x), mask
