"""BigVGAN generator with ECAPA-TDNN speaker conditioning: GPT latents -> 24 kHz waveform.

Layout (IndexTTS 1.0/1.5): `conv_pre` (gpt_dim -> upsample_initial_channel, k7), then per stage a
transposed-conv upsampler, a speaker projection added to it, and the average of the AMP blocks
(one per resblock kernel size); then an anti-aliased SnakeBeta, `conv_post` and tanh. The speaker
embedding enters through the 1x1 `cond_layer` after `conv_pre` and `conds[i]` after every upsampler.

The official checkpoint stores weight norm in the old `torch.nn.utils.weight_norm` form
(`weight_g`/`weight_v`). Our convolutions keep those two parameters so the strict load matches
the file key for key, and `BigVGAN.post_load()` folds them into plain weights once, as the
reference's `remove_weight_norm()` does; `forward` never recomputes the norm afterwards.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from indextts.config import BigVGANConfig
from indextts.vocoder.alias_free import AntiAliasedSnakeBeta
from indextts.vocoder.ecapa import ECAPATDNN


class WeightNormConv1d(nn.Module):
    """Conv1d (or ConvTranspose1d) parametrised as `w = g * v / ||v||`, the norm taken over every
    dim but 0. Dim 0 is out_channels for a conv and in_channels for a transposed conv (its weight
    is `[in, out, k]`), which is what the checkpoint's `weight_g` shapes encode.

    `fold()` replaces (`weight_g`, `weight_v`) by one plain `weight` parameter; before that the
    weight is computed on every call (only useful for a module not loaded from a checkpoint).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, transposed: bool = False):
        super().__init__()
        self.stride, self.padding, self.dilation, self.transposed = stride, padding, dilation, transposed
        shape = (in_channels, out_channels, kernel_size) if transposed else (out_channels, in_channels, kernel_size)
        # Registration order bias, weight_g, weight_v matches the checkpoint's key order.
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_g = nn.Parameter(torch.empty(shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(shape))
        self.folded = False
        # Placeholder values; real ones come from the checkpoint.
        with torch.no_grad():
            nn.init.normal_(self.weight_v, 0.0, 0.01)
            self.weight_g.copy_(self._norm(self.weight_v))

    @staticmethod
    def _norm(v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)

    def normalized_weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self._norm(self.weight_v))

    @torch.no_grad()
    def fold(self) -> None:
        if self.folded:
            return
        weight = self.normalized_weight()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight)
        self.folded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, T] -> [B, C_out, T'] (T' = T * stride for the transposed upsamplers)
        weight = self.weight if self.folded else self.normalized_weight()
        if self.transposed:
            return F.conv_transpose1d(x, weight, self.bias, self.stride, self.padding, dilation=self.dilation)
        return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation)


class _Valid:
    """Which steps of a right-padded batch are real at one time resolution: per-item `lengths`
    [B] and the `pad` mask [B, 1, T] (True past each item's end), built once per resolution."""

    def __init__(self, lengths: torch.Tensor, steps: int):
        self.lengths = lengths.to(torch.int32)      # the fused activation's type: no cast per call
        self.pad = (torch.arange(steps, device=lengths.device) >= lengths[:, None])[:, None, :]

    def upsampled(self, rate: int) -> "_Valid":
        return _Valid(self.lengths * rate, self.pad.shape[-1] * rate)


def _zero_past(x: torch.Tensor, valid: Optional[_Valid]) -> torch.Tensor:
    """`x` [B, C, T] with each item's padding set to zero (no-op for an unpadded batch)."""
    return x if valid is None else x.masked_fill(valid.pad, 0.0)


def _lengths(valid: Optional[_Valid]) -> Optional[torch.Tensor]:
    return None if valid is None else valid.lengths


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock(nn.Module):
    """Anti-aliased multi-periodicity block (BigVGAN resblock "1"): three residual units, each
    act -> dilated conv -> act -> conv. `[B, C, T] -> [B, C, T]`."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, d), dilation=d)
            for d in dilations)
        self.convs2 = nn.ModuleList(
            WeightNormConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1))
            for _ in dilations)
        # Stored interleaved: activations[2i] precedes convs1[i], activations[2i+1] precedes convs2[i].
        self.activations = nn.ModuleList(AntiAliasedSnakeBeta(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor, valid: Optional[_Valid] = None) -> torch.Tensor:
        # valid: a padded batch (see BigVGAN.forward); every conv input is zero past each item's end.
        lengths = _lengths(valid)
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            xt = c1(_zero_past(self.activations[2 * i](x, lengths), valid))
            xt = c2(_zero_past(self.activations[2 * i + 1](xt, lengths), valid))
            x = x + xt
        return x


class BigVGAN(nn.Module):
    """Vocoder: `forward(latents [B, T, gpt_dim], speaker_embedding [B, 1, S]) -> wav [B, 1, T * hop]`.

    `hop` is the product of the upsample rates (1024 for IndexTTS: 24 kHz audio from 23.4 Hz
    latents). `speaker_embedding(mel)` computes the `[B, 1, S]` conditioning from a reference mel.
    Load weights through `indextts.checkpoint.load_vocoder`, which calls `post_load()`.
    """

    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        if cfg.resblock != "1" or cfg.activation != "snakebeta" or not cfg.snake_logscale or cfg.feat_upsample:
            raise ValueError("BigVGAN supports only resblock '1', log-scale snakebeta and feat_upsample=False "
                             "(the IndexTTS 1.0/1.5 configuration)")
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        c0 = cfg.upsample_initial_channel
        stage_channels = [c0 // 2 ** (i + 1) for i in range(len(cfg.upsample_rates))]
        if stage_channels[-1] < 1:
            raise ValueError(f"upsample_initial_channel {c0} is too small for {len(cfg.upsample_rates)} "
                             "upsampling stages (channels halve at each)")

        self.conv_pre = WeightNormConv1d(cfg.gpt_dim, c0, 7, padding=3)
        # Each upsampler sits alone in a ModuleList: the checkpoint's keys are `ups.{i}.0.*`.
        self.ups = nn.ModuleList(
            nn.ModuleList([WeightNormConv1d(c_in, c_out, k, stride=u, padding=(k - u) // 2, transposed=True)])
            for c_in, c_out, u, k in zip([c0] + stage_channels[:-1], stage_channels,
                                         cfg.upsample_rates, cfg.upsample_kernel_sizes))
        self.resblocks = nn.ModuleList(
            AMPBlock(ch, k, tuple(d))
            for ch in stage_channels
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.activation_post = AntiAliasedSnakeBeta(stage_channels[-1])
        self.conv_post = WeightNormConv1d(stage_channels[-1], 1, 7, padding=3)

        self.speaker_encoder = ECAPATDNN(cfg.num_mels, lin_neurons=cfg.speaker_embedding_dim,
                                         channels=tuple(cfg.speaker_encoder_channels))
        self.cond_layer = nn.Conv1d(cfg.speaker_embedding_dim, c0, 1)
        self.conds = (nn.ModuleList(nn.Conv1d(cfg.speaker_embedding_dim, ch, 1) for ch in stage_channels)
                      if cfg.cond_d_vector_in_each_upsampling_layer else None)

    @property
    def hop_length(self) -> int:
        """Output samples per latent frame."""
        return self.cfg.hop_length

    def post_load(self) -> None:
        """Fold weight norm into plain weights; call once after the state dict is loaded.

        After this the module no longer has `weight_g`/`weight_v` and cannot load the official
        file again (build a new one instead). Idempotent.
        """
        for module in self.modules():
            if isinstance(module, WeightNormConv1d):
                module.fold()

    def speaker_embedding(self, mel: torch.Tensor) -> torch.Tensor:
        """ECAPA-TDNN embedding of a whole reference log-mel.

        mel: `[B, num_mels, frames]` as `MelSpectrogramFeatures` makes it (at least 5 frames: the encoder reflect-pads by up to 4).
        Returns `[B, 1, speaker_embedding_dim]`. The reference calls its encoder with the mel
        transposed to `[B, frames, num_mels]` and no lengths; the encoder transposes it back.
        """
        return self.speaker_encoder(mel)

    def forward(self, latents: torch.Tensor, speaker_embedding: torch.Tensor,
                lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """latents: `[B, T, gpt_dim]` (GPT layout); speaker_embedding: `[B, 1, S]` (or `[1, 1, S]`,
        broadcast over the batch). Returns the float waveform `[B, 1, T * hop_length]` in [-1, 1].

        `lengths` (`[B]` frame counts) batches items of different lengths, right-padded to T:
        every convolution sees zeros past an item's end (as its own zero padding would give it
        alone) and every activation replicates the item's own last sample, so item b's first
        `lengths[b] * hop_length` samples are what it alone would give (up to floating-point
        summation order); the rest is padding to drop."""
        spk = speaker_embedding.transpose(1, 2)  # [B, S, 1], broadcasts over time
        valid = None if lengths is None else _Valid(lengths.to(latents.device), latents.shape[1])
        x = self.conv_pre(_zero_past(latents.transpose(1, 2), valid))  # [B, C0, T]
        x = x + self.cond_layer(spk)
        for i, (up,) in enumerate(self.ups):
            x = up(_zero_past(x, valid))  # [B, C_i, T * prod(rates[:i+1])]
            valid = None if valid is None else valid.upsampled(self.cfg.upsample_rates[i])
            if self.conds is not None:
                x = x + self.conds[i](spk)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x, valid)
            for block in blocks[1:]:
                xs = xs + block(x, valid)
            x = xs / self.num_kernels
        x = self.conv_post(_zero_past(self.activation_post(x, _lengths(valid)), valid))  # [B, 1, T * hop]
        return torch.tanh(x)
