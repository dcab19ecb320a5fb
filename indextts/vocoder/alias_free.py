"""SnakeBeta activation with 2x anti-aliasing, as BigVGAN's AMP blocks use it.

An activation runs at twice the sample rate: upsample 2x through a Kaiser-windowed sinc low-pass,
apply SnakeBeta, low-pass again and decimate 2x. This keeps the harmonics the periodic nonlinearity
creates from folding back into the audible band.

The filters are persistent `[1, 1, 12]` buffers because the official checkpoint stores them; they
are computed here too so that a module built without a checkpoint is usable.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from indextts.vocoder import fused

# The official checkpoints use ratio 2 and 12-tap filters for both resamplers.
RATIO = 2
KERNEL_SIZE = 12
# SnakeBeta's guard against 1/0 when exp(beta) underflows; kept for numerical parity.
SNAKE_EPS = 1e-9


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass with unit DC gain -> `[1, 1, kernel_size]`.

    `cutoff` and `half_width` are fractions of the sample rate (0.5 = Nyquist).
    """
    half = kernel_size // 2
    # Kaiser's design formula: attenuation A (dB) for this transition width, then the window's beta.
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half) + 0.5  # taps straddle the centre
    else:
        time = torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    # Unit DC gain, so a constant input is not scaled by the filter.
    taps = taps / taps.sum()
    return taps.view(1, 1, kernel_size)


class SnakeBeta(nn.Module):
    """`x + 1/exp(beta) * sin(x * exp(alpha))^2` per channel; alpha and beta are stored as logs."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T]
        alpha = self.alpha.exp()[None, :, None]
        beta = self.beta.exp()[None, :, None]
        return x + (1.0 / (beta + SNAKE_EPS)) * torch.sin(x * alpha).pow(2)


class UpSample2x(nn.Module):
    """Zero-stuffing 2x upsampler followed by the low-pass (a transposed depthwise conv)."""

    def __init__(self):
        super().__init__()
        self.pad = KERNEL_SIZE // RATIO - 1
        self.crop_left = self.pad * RATIO + (KERNEL_SIZE - RATIO) // 2
        self.crop_right = self.pad * RATIO + (KERNEL_SIZE - RATIO + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, KERNEL_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, 2T]
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = RATIO * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=RATIO, groups=channels)
        return x[..., self.crop_left:-self.crop_right]


class LowPassFilter(nn.Module):
    """Depthwise low-pass with replicate padding and a stride (the decimation)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_left = KERNEL_SIZE // 2 - int(KERNEL_SIZE % 2 == 0)
        self.pad_right = KERNEL_SIZE // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, KERNEL_SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, ceil(T / stride)]
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample2x(nn.Module):
    """Low-pass then keep every second sample. The extra nesting mirrors the checkpoint's
    `downsample.lowpass.filter` key."""

    def __init__(self):
        super().__init__()
        self.lowpass = LowPassFilter(stride=RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, 2T] -> [B, C, T]
        return self.lowpass(x)


class AntiAliasedSnakeBeta(nn.Module):
    """SnakeBeta evaluated at twice the sample rate: `[B, C, T] -> [B, C, T]`."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample2x()
        self.downsample = DownSample2x()

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`lengths` ([B]) marks right-padded items: item b is `x[b, :, :lengths[b]]`, treated
        exactly as if it were alone; its outputs past that length are 0."""
        if fused.available(x):   # one Triton kernel on CUDA, same arithmetic (indextts.vocoder.fused)
            return fused.anti_aliased_snake(x, self.upsample.filter, self.downsample.lowpass.filter,
                                            self.act.alpha, self.act.beta, lengths)
        if lengths is None:
            return self.downsample(self.act(self.upsample(x)))
        out = torch.zeros_like(x)
        for b, n in enumerate(lengths.tolist()):
            out[b, :, :n] = self.downsample(self.act(self.upsample(x[b:b + 1, :, :n])))[0]
        return out
