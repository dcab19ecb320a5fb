"""One Triton kernel for BigVGAN's anti-aliased SnakeBeta (GPU only).

`AntiAliasedSnakeBeta` is 2x upsampling (replicate pad, zero-stuffing transposed depthwise conv
with a 12-tap kaiser-sinc filter, crop), SnakeBeta, then a 12-tap low-pass with replicate padding
and stride 2. In PyTorch that is about ten kernels per call (pads, cuDNN grouped transposed and
depthwise convolutions with layout conversions, five elementwise ops), and BigVGAN-1.5 calls it
109 times per waveform: on an H100 these activations were about 70% of the vocoder's GPU time and
most of its ~2000 kernel launches (bench/results/vocoder.json). This kernel computes each output
sample directly, with fp32 arithmetic inside:

    u[m]   = 2 * sum_{k = m+15 (mod 2)} f[k] * x[clamp((m + 15 - k) / 2 - 5, 0, T - 1)]   (m < 2T)
    v[m]   = u[m] + sin(u[m] * exp(alpha))^2 / (exp(beta) + eps)
    out[t] = sum_{j < 12} g[j] * v[clamp(2t + j - 5, 0, 2T - 1)]                          (t < T)

which is exactly what the padded/cropped convolutions compute (index derivation in
`AntiAliasedSnakeBeta`'s modules: pad 5, crop 15 for the upsampler; pad 5 left, 6 right for the
low-pass). It reads the module's own filter buffers and parameters, so it stays correct for any
checkpoint. `tests/test_vocoder.py` checks it against the PyTorch modules (Triton's interpreter
runs it on CPU there) and the GPU test against a whole-waveform reference.
"""

from __future__ import annotations

import os

import torch

try:   # Triton ships with CUDA builds of PyTorch; CPU installs may lack it
    import triton
    import triton.language as tl
except ImportError:   # pragma: no cover - depends on the install
    triton = None

SNAKE_EPS = 1e-9
BLOCK = 256


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernel will be used for `x` (CUDA tensor, Triton importable, and not
    turned off with INDEXTTS_FUSED_SNAKE=0)."""
    return (triton is not None and x.is_cuda and os.environ.get("INDEXTTS_FUSED_SNAKE", "1") != "0")


if triton is not None:
    @triton.jit
    def _aa_snake_kernel(x_ptr, out_ptr, up_ptr, down_ptr, alpha_ptr, beta_ptr, len_ptr, C, T,
                         eps, HAS_LENGTHS: tl.constexpr, BLOCK_T: tl.constexpr):
        row = tl.program_id(0)                 # b * C + c
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        c = row % C
        if HAS_LENGTHS:                        # this item's valid length: its edges replicate there
            n = tl.load(len_ptr + row // C)
        else:
            n = T
        mask = t < n
        alpha = tl.exp(tl.load(alpha_ptr + c).to(tl.float32))
        inv_beta = 1.0 / (tl.exp(tl.load(beta_ptr + c).to(tl.float32)) + eps)
        base = x_ptr + row.to(tl.int64) * T
        acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for j in tl.static_range(12):
            m = tl.minimum(tl.maximum(2 * t + (j - 5), 0), 2 * n - 1)
            parity = (m + 15) % 2
            u = tl.zeros((BLOCK_T,), dtype=tl.float32)
            for q in tl.static_range(6):
                k = parity + 2 * q
                i = tl.minimum(tl.maximum((m + 15 - k) // 2 - 5, 0), n - 1)
                xv = tl.load(base + i, mask=mask, other=0.0).to(tl.float32)
                fk = tl.load(up_ptr + k).to(tl.float32)
                u += fk * xv
            u = 2.0 * u
            s = tl.sin(u * alpha)
            v = u + inv_beta * s * s
            acc += tl.load(down_ptr + j).to(tl.float32) * v
        tl.store(out_ptr + row.to(tl.int64) * T + t, acc.to(out_ptr.dtype.element_ty), mask=t < T)


def anti_aliased_snake(x: torch.Tensor, up_filter: torch.Tensor, down_filter: torch.Tensor,
                       log_alpha: torch.Tensor, log_beta: torch.Tensor,
                       lengths: torch.Tensor | None = None) -> torch.Tensor:
    """x: [B, C, T] -> [B, C, T], same dtype; filters are the modules' [1, 1, 12] buffers.

    `lengths` ([B] ints, each in [1, T]): item b is treated as `x[b, :, :lengths[b]]` alone (its
    replicate padding at its own end); its outputs past that length are 0 (don't use them)."""
    if triton is None:
        raise RuntimeError("the fused anti-aliased SnakeBeta needs Triton")
    x = x.contiguous()
    b, c, t = x.shape
    out = torch.empty_like(x)
    grid = (b * c, triton.cdiv(t, BLOCK))
    lens = lengths.to(device=x.device, dtype=torch.int32).contiguous() if lengths is not None else out
    _aa_snake_kernel[grid](x, out, up_filter.reshape(-1).contiguous(), down_filter.reshape(-1).contiguous(),
                           log_alpha.contiguous(), log_beta.contiguous(), lens, c, t, SNAKE_EPS,
                           HAS_LENGTHS=lengths is not None, BLOCK_T=BLOCK)
    return out
