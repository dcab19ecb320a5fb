"""ECAPA-TDNN speaker encoder (Desplanques et al. 2020) as IndexTTS's BigVGAN uses it.

The layer structure and state-dict key names are SpeechBrain's (`blocks.0.conv.conv.weight`,
`...norm.norm.running_mean`), because the official `bigvgan_generator.pth` stores the encoder
under those names. Two SpeechBrain conventions matter numerically and are kept: every
convolution pads "same" with *reflect* padding, and every TDNN block is conv -> ReLU -> BatchNorm.

IndexTTS always calls the encoder on whole, unpadded reference mels (no relative lengths), so
statistics pool over every frame; that is the only mode implemented here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CHANNELS = (512, 512, 512, 512, 1536)
DEFAULT_KERNEL_SIZES = (5, 3, 3, 3, 1)
DEFAULT_DILATIONS = (1, 2, 3, 4, 1)
# Floor under the pooled variance before the square root.
STD_EPS = 1e-12


class SameConv1d(nn.Module):
    """Stride-1 conv whose output has the input's length, reflect-padded.

    The conv sits in `self.conv` so that keys read `<name>.conv.weight` as in the checkpoint.
    Inputs need more frames than the padding (dilation * (kernel_size - 1) / 2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T] -> [B, C_out, T]
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class BatchNorm(nn.Module):
    """`nn.BatchNorm1d` nested as `self.norm`, for the checkpoint's `<name>.norm.*` keys."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """conv -> ReLU -> BatchNorm: `[B, C_in, T] -> [B, C_out, T]`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = SameConv1d(in_channels, out_channels, kernel_size, dilation)
        self.activation = nn.ReLU()
        self.norm = BatchNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Hierarchical residual convs over `scale` channel groups; the first group passes through."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Net channels ({channels}) must be divisible by its scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> [B, C, T]
        chunks = torch.chunk(x, self.scale, dim=1)
        out = [chunks[0]]
        y = self.blocks[0](chunks[1])
        out.append(y)
        for block, chunk in zip(self.blocks[1:], chunks[2:]):
            y = block(chunk + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from the time average."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = SameConv1d(channels, se_channels, 1)
        self.relu = nn.ReLU()
        self.conv2 = SameConv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T]
        s = x.mean(dim=2, keepdim=True)  # [B, C, 1]
        gate = torch.sigmoid(self.conv2(self.relu(self.conv1(s))))
        return gate * x


class SERes2NetBlock(nn.Module):
    """TDNN(1x1) -> Res2Net -> TDNN(1x1) -> SE, plus a residual (1x1 conv when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, res2net_scale: int, se_channels: int,
                 kernel_size: int, dilation: int):
        super().__init__()
        self.tdnn1 = TDNNBlock(in_channels, out_channels, 1, 1)
        self.res2net_block = Res2NetBlock(out_channels, res2net_scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(out_channels, out_channels, 1, 1)
        self.se_block = SEBlock(out_channels, se_channels)
        self.shortcut = SameConv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T] -> [B, C_out, T]
        residual = x if self.shortcut is None else self.shortcut(x)
        x = self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))
        return x + residual


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of `x: [B, C, T]` under `weights` that sum to 1 over T -> 2 x [B, C]."""
    mean = (weights * x).sum(dim=2)
    var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=STD_EPS).sqrt()


class AttentiveStatisticsPooling(nn.Module):
    """Attention-weighted mean and std over time: `[B, C, T] -> [B, 2C, 1]`.

    With global context the attention also sees the utterance's plain mean and std.
    """

    def __init__(self, channels: int, attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        self.tdnn = TDNNBlock(channels * 3 if global_context else channels, attention_channels, 1, 1)
        self.tanh = nn.Tanh()
        self.conv = SameConv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        if self.global_context:
            uniform = torch.full_like(x[:, :1, :], 1.0 / frames)  # [B, 1, T]
            mean, std = _weighted_stats(x, uniform)
            attn = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        else:
            attn = x
        attn = F.softmax(self.conv(self.tanh(self.tdnn(attn))), dim=2)  # [B, C, T], per-channel weights
        mean, std = _weighted_stats(x, attn)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


class ECAPATDNN(nn.Module):
    """Speaker embedding from a log-mel spectrogram: `[B, input_size, frames] -> [B, 1, lin_neurons]`.

    Args mirror SpeechBrain's `ECAPA_TDNN` (ReLU activations, groups 1); `channels` lists the
    widths of the first TDNN, the SE-Res2Net blocks and the aggregation layer.
    """

    def __init__(self, input_size: int, lin_neurons: int = 192,
                 channels: Sequence[int] = DEFAULT_CHANNELS,
                 kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
                 dilations: Sequence[int] = DEFAULT_DILATIONS,
                 attention_channels: int = 128, res2net_scale: int = 8, se_channels: int = 128,
                 global_context: bool = True):
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(dilations) or len(channels) < 3:
            raise ValueError(f"channels, kernel_sizes and dilations must have one equal length >= 3, got "
                             f"{list(channels)}, {list(kernel_sizes)}, {list(dilations)}")
        self.blocks = nn.ModuleList([TDNNBlock(input_size, channels[0], kernel_sizes[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(SERes2NetBlock(channels[i - 1], channels[i], res2net_scale, se_channels,
                                              kernel_sizes[i], dilations[i]))
        # Multi-layer feature aggregation over every SE-Res2Net block's output.
        self.mfa = TDNNBlock(sum(channels[1:-1]), channels[-1], kernel_sizes[-1], dilations[-1])
        self.asp = AttentiveStatisticsPooling(channels[-1], attention_channels, global_context)
        self.asp_bn = BatchNorm(channels[-1] * 2)
        self.fc = SameConv1d(channels[-1] * 2, lin_neurons, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: [B, input_size, frames] (channels first; the reference transposes [B, frames, n] to this)
        x = self.blocks[0](mel)
        features = []
        for block in self.blocks[1:]:
            x = block(x)
            features.append(x)
        x = self.mfa(torch.cat(features, dim=1))  # [B, C_last, T]
        x = self.asp_bn(self.asp(x))  # [B, 2 C_last, 1]
        return self.fc(x).transpose(1, 2)  # [B, 1, lin_neurons]
