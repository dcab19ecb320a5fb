"""Exact chunked BigVGAN vocoding: the receptive field from the config, windowed chunks, and a
stateful streaming vocoder.

BigVGAN is a non-causal stack, so the samples of a frame depend on latent frames on both sides.
Every layer is shift-equivariant with an integer index map (output `t` reads a fixed input range),
so the exact support follows from kernel sizes, dilations, paddings and strides alone:

- `receptive_field(cfg)` composes those maps: how far (in samples and whole frames) a latent frame
  reaches. The speaker path adds a constant per channel and has no reach in time.
- `vocode_window` / `vocode_chunked` vocode `[context + chunk + lookahead]` windows cut from the
  segment (never padded beyond it, so the segment edges see the model's own padding) and keep
  the chunk's samples; `WindowCutter` cuts such windows from latents as they arrive (what the
  vocoder stage serves: stateless, so any replica can vocode any window).
- `StreamingVocoder` runs the same layers incrementally: each layer keeps the inputs its next
  outputs still need, computes only outputs whose inputs have all arrived, and the segment end
  (`finish`) applies the model's own right padding. Its output is whole-segment vocoding, for any
  chunk schedule; a `lookahead` smaller than the support emits earlier samples from a
  speculative flush of a copy of the state (less delay, not exact).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from indextts.config import BigVGANConfig
from indextts.types import LatentWindow
from indextts.vocoder.alias_free import AntiAliasedSnakeBeta
from indextts.vocoder.bigvgan import BigVGAN, WeightNormConv1d


def _ceil_div(a: int, b: int) -> int:
    """Integer ceil(a / b) for b > 0 (index maps need exact integers)."""
    return -((-a) // b)


# --- per-layer index maps with their incremental computation -------------------------------------

class _Leaf:
    """One layer with an index map: output block `[t0, t1)` reads inputs `needs(t0, t1)`
    (half-open, may extend past the signal, where the model pads); `rate` outputs per input."""

    rate = 1
    delay = 0   # with n inputs known (more to come), outputs below `n * rate - delay` are final

    def needs(self, t0: int, t1: int) -> tuple[int, int]:
        return t0, t1

    def reach(self, i0: int, i1: int) -> tuple[int, int]:
        """Outputs (closed interval) that inputs `[i0, i1]` (closed) can change."""
        return i0, i1

    def compute(self, window: torch.Tensor, a: int, i0: int, i1: int, t0: int, t1: int) -> torch.Tensor:
        """Outputs `[t0, t1)` from the inputs `[a, a + window length)`, that is `needs(t0, t1)`
        clipped to the signal."""
        raise NotImplementedError


class _Conv(_Leaf):
    """Stride-1 zero-padded convolution, computed 'valid' on real context (zeros only past the signal)."""

    def __init__(self, m: WeightNormConv1d):
        if m.transposed or m.stride != 1:
            raise ValueError("_Conv expects a stride-1 convolution")
        k = (m.weight if m.folded else m.weight_v).shape[-1]
        self.m, self.before, self.after = m, m.padding, (k - 1) * m.dilation - m.padding
        self.delay = self.after

    def needs(self, t0, t1):
        return t0 - self.before, t1 + self.after

    def reach(self, i0, i1):
        return i0 - self.after, i1 + self.before

    def compute(self, window, a, i0, i1, t0, t1):
        x = F.pad(window, (a - i0, i1 - a - window.shape[-1]))   # zeros only where the model pads
        weight = self.m.weight if self.m.folded else self.m.normalized_weight()
        return F.conv1d(x, weight, self.m.bias, dilation=self.m.dilation)


class _Up(_Leaf):
    """Transposed-conv upsampler: run on a window of real inputs (absent ones are zero, as in the model), then crop."""

    def __init__(self, m: WeightNormConv1d):
        k = (m.weight if m.folded else m.weight_v).shape[-1]
        if not m.transposed or k - 2 * m.padding != m.stride or k < m.stride:
            raise ValueError("_Up expects a length-preserving transposed convolution (kernel - 2 * padding == stride)")
        self.m, self.rate, self.k, self.p = m, m.stride, k, m.padding
        self.delay = self.p

    def needs(self, t0, t1):
        return _ceil_div(t0 + self.p - self.k + 1, self.rate), (t1 - 1 + self.p) // self.rate + 1

    def reach(self, i0, i1):
        return i0 * self.rate - self.p, i1 * self.rate + self.k - 1 - self.p

    def compute(self, window, a, i0, i1, t0, t1):
        return self.m(window)[..., t0 - a * self.rate:t1 - a * self.rate]


class _Act(_Leaf):
    """Anti-aliased SnakeBeta: reads a fixed input range around each output (from its filters'
    lengths, paddings and crops); run on a window, whose ends are real data or the signal's own."""

    def __init__(self, m: AntiAliasedSnakeBeta):
        up, low = m.upsample, m.downsample.lowpass
        r, k_up, k_low = low.stride, up.filter.shape[-1], low.filter.shape[-1]
        # u[j] reads x'[ceil((j + crop - K + 1) / r), floor((j + crop) / r)] (x' padded by `pad`);
        # out[t] reads u[r t - pad_left, r t + K - 1 - pad_left].
        self.before = -(_ceil_div(-low.pad_left + up.crop_left - k_up + 1, r) - up.pad)
        self.after = (k_low - 1 - low.pad_left + up.crop_left) // r - up.pad
        self.m, self.delay = m, self.after

    def needs(self, t0, t1):
        return t0 - self.before, t1 + self.after

    def reach(self, i0, i1):
        return i0 - self.after, i1 + self.before

    def compute(self, window, a, i0, i1, t0, t1):
        return self.m(window)[..., t0 - a:t1 - a]


class _Pointwise(_Leaf):
    """Elementwise step (bias add, tanh, scale): no reach in time."""

    def __init__(self, fn):
        self.fn = fn

    def compute(self, window, a, i0, i1, t0, t1):
        return self.fn(window)


# --- the network as a tree of leaves, residual sums and block means -----------------------------

@dataclass
class _Residual:
    body: list          # x + body(x), as AMPBlock's residual units


@dataclass
class _Mean:
    branches: list      # (branch_0(x) + branch_1(x) + ...) / len, as a stage's AMP blocks


def _amp_plan(block) -> list:
    return [_Residual([_Act(block.activations[2 * i]), _Conv(c1), _Act(block.activations[2 * i + 1]), _Conv(c2)])
            for i, (c1, c2) in enumerate(zip(block.convs1, block.convs2))]


def _plan(model: BigVGAN, cond: Optional[torch.Tensor] = None, conds: Sequence[torch.Tensor] = ()) -> list:
    """BigVGAN.forward as a list of nodes; `cond`/`conds` are the speaker terms (None: structure only)."""
    plan: list = [_Conv(model.conv_pre)]
    if cond is not None:
        plan.append(_Pointwise(lambda x, c=cond: x + c))
    for i, (up,) in enumerate(model.ups):
        plan.append(_Up(up))
        if conds:
            plan.append(_Pointwise(lambda x, c=conds[i]: x + c))
        blocks = model.resblocks[i * model.num_kernels:(i + 1) * model.num_kernels]
        plan.append(_Mean([_amp_plan(b) for b in blocks]))
    plan += [_Act(model.activation_post), _Conv(model.conv_post), _Pointwise(torch.tanh)]
    return plan


def _reach(plan: list, i0: int, i1: int) -> tuple[int, int]:
    """Closed interval of outputs that inputs `[i0, i1]` can change (hull over branches)."""
    for node in plan:
        if isinstance(node, _Residual):
            lo, hi = _reach(node.body, i0, i1)
            i0, i1 = min(i0, lo), max(i1, hi)
        elif isinstance(node, _Mean):
            spans = [_reach(b, i0, i1) for b in node.branches]
            i0, i1 = min(s[0] for s in spans), max(s[1] for s in spans)
        else:
            i0, i1 = node.reach(i0, i1)
    return i0, i1


@dataclass(frozen=True)
class ReceptiveField:
    """Exact support of BigVGAN in time. A latent frame changes the samples from `before` samples
    ahead of its own `hop` samples to `after` samples past them; so a frame's samples depend on
    `context` frames before it and `lookahead` frames after it."""

    before: int
    after: int
    hop: int

    @property
    def context(self) -> int:
        return _ceil_div(self.after, self.hop)

    @property
    def lookahead(self) -> int:
        return _ceil_div(self.before, self.hop)


def receptive_field_of(model: BigVGAN) -> ReceptiveField:
    """The support of `model`'s layers (see `ReceptiveField`)."""
    lo, hi = _reach(_plan(model), 0, 0)
    return ReceptiveField(before=-lo, after=hi - (model.hop_length - 1), hop=model.hop_length)


def receptive_field(cfg: BigVGANConfig) -> ReceptiveField:
    """The support of the vocoder `cfg` describes, from its structure alone (built on meta)."""
    with torch.device("meta"):
        return receptive_field_of(BigVGAN(cfg))


# --- (a) windows cut from the segment ------------------------------------------------------------

def vocode_window(model: BigVGAN, latents: torch.Tensor, speaker: torch.Tensor, left: int, emit: int) -> torch.Tensor:
    """Vocode a window `latents [B, left + emit + lookahead, D]` and keep the samples of its
    frames `[left, left + emit)`: `[B, 1, emit * hop]`. Exact when the window holds
    `receptive_field` context and lookahead, or reaches the segment's own ends there."""
    hop = model.hop_length
    return model(latents, speaker)[..., left * hop:(left + emit) * hop]


def vocode_chunked(model: BigVGAN, latents: torch.Tensor, speaker: torch.Tensor, chunks: Sequence[int],
                   lookahead: Optional[int] = None, context: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Vocode the segment `latents [B, n, D]` chunk by chunk (frame counts `chunks`, the last one
    repeated until the segment ends), each from a window cut from the segment; yields each chunk's
    samples. `lookahead`/`context` default to the exact receptive field."""
    rf = receptive_field_of(model)
    lookahead = rf.lookahead if lookahead is None else lookahead
    context = rf.context if context is None else context
    n, start, k, sizes = latents.shape[1], 0, 0, list(chunks) or [latents.shape[1]]
    while start < n:
        end = min(n, start + max(1, sizes[min(k, len(sizes) - 1)]))
        lo, hi = max(0, start - context), min(n, end + lookahead)
        yield vocode_window(model, latents[:, lo:hi], speaker, start - lo, end - start)
        start, k = end, k + 1


class WindowCutter:
    """Cuts a segment's latents, arriving chunk by chunk, into `LatentWindow`s for a stateless
    vocoder (one object per segment): after each chunk, the frames whose samples no longer depend
    on frames still to come (all but the last `lookahead`; every frame at the segment's end) go
    out in one window with up to `context` frames before them and the `lookahead` after them.
    With `context` and `lookahead` from `receptive_field`, the windows' samples concatenate to
    whole-segment vocoding; only the last `context + lookahead` frames are kept."""

    def __init__(self, context: int, lookahead: int):
        if context < 0 or lookahead < 0:
            raise ValueError("context and lookahead are frame counts (>= 0)")
        self.context, self.lookahead = context, lookahead
        self.kept: Optional[torch.Tensor] = None   # frames [first, frames) of the segment
        self.first = 0
        self.frames = 0                            # frames received
        self.done = 0                              # frames whose samples went out

    def push(self, latents: torch.Tensor, final: bool) -> Optional[LatentWindow]:
        """latents `[n, D]`: the segment's next frames -> the window now due, or None."""
        self.kept = latents if self.kept is None else torch.cat([self.kept, latents])
        self.frames += latents.shape[0]
        ready = self.frames if final else max(self.done, self.frames - self.lookahead)
        if ready == self.done:
            return None
        lo = max(self.first, self.done - self.context)
        window = LatentWindow(self.kept[lo - self.first:], left=self.done - lo, emit=ready - self.done)
        self.done = ready
        keep = max(self.first, self.done - self.context)
        self.kept, self.first = self.kept[keep - self.first:], keep
        return window


# --- (b) stateful streaming ----------------------------------------------------------------------

class _LeafStream:
    """A leaf run incrementally: keeps the inputs its next outputs read, emits final outputs.
    `push` takes and returns `[B, C, n]` or None for no samples."""

    def __init__(self, leaf: _Leaf):
        self.leaf, self.buf, self.start, self.n_in, self.n_out = leaf, None, 0, 0, 0

    def push(self, x: Optional[torch.Tensor], final: bool) -> Optional[torch.Tensor]:
        if x is not None:
            self.buf = x if self.buf is None else torch.cat([self.buf, x], dim=-1)
            self.n_in += x.shape[-1]
        leaf = self.leaf
        t1 = self.n_in * leaf.rate if final else max(self.n_out, self.n_in * leaf.rate - leaf.delay)
        if t1 == self.n_out:
            return None
        i0, i1 = leaf.needs(self.n_out, t1)
        a, b = max(0, i0), min(self.n_in, i1)
        y = leaf.compute(self.buf[..., a - self.start:b - self.start], a, i0, i1, self.n_out, t1)
        self.n_out = t1
        keep = min(self.n_in, max(self.start, leaf.needs(t1, t1 + 1)[0]))   # inputs later outputs read
        self.buf, self.start = self.buf[..., keep - self.start:], keep
        return y

    def fork(self) -> "_LeafStream":
        return copy.copy(self)   # tensors are never modified in place, so sharing them is safe


class _ChainStream:
    """Nodes in sequence; a residual sum or a mean aligns its branches by sample index."""

    def __init__(self, plan: list):
        self.nodes = [_node_stream(n) for n in plan]

    def push(self, x: Optional[torch.Tensor], final: bool) -> Optional[torch.Tensor]:
        for node in self.nodes:
            x = node.push(x, final)
        return x

    def fork(self) -> "_ChainStream":
        other = copy.copy(self)
        other.nodes = [n.fork() for n in self.nodes]
        return other


class _MergeStream:
    """`(x if skip) + branch_0(x) + ...`, divided by `scale`, added in the model's order and
    emitted as far as every branch has produced."""

    def __init__(self, branches: list, skip: bool, scale: float):
        self.branches = [_ChainStream(b) for b in branches]
        self.skip, self.scale = skip, scale
        self.pending: list[Optional[torch.Tensor]] = [None] * (len(branches) + int(skip))

    def push(self, x: Optional[torch.Tensor], final: bool) -> Optional[torch.Tensor]:
        new = ([x] if self.skip else []) + [b.push(x, final) for b in self.branches]
        self.pending = [p if y is None else y if p is None else torch.cat([p, y], dim=-1)
                        for p, y in zip(self.pending, new)]
        m = min(0 if p is None else p.shape[-1] for p in self.pending)
        if m == 0:
            return None
        out = self.pending[0][..., :m]
        for p in self.pending[1:]:
            out = out + p[..., :m]
        self.pending = [p[..., m:] for p in self.pending]
        return out if self.scale == 1 else out / self.scale

    def fork(self) -> "_MergeStream":
        other = copy.copy(self)
        other.branches, other.pending = [b.fork() for b in self.branches], list(self.pending)
        return other


def _node_stream(node):
    if isinstance(node, _Residual):
        return _MergeStream([node.body], skip=True, scale=1)
    if isinstance(node, _Mean):
        return _MergeStream(node.branches, skip=False, scale=len(node.branches))
    return _LeafStream(node)


@dataclass
class StreamState:
    """One segment in progress: the layers' kept inputs, frames fed and samples emitted."""

    net: _ChainStream
    empty: torch.Tensor   # a `[B, 1, 0]` waveform: what "no samples" looks like for this stream
    frames: int = 0
    exact: int = 0        # samples the exact pipeline has produced
    emitted: int = 0      # samples returned to the caller (ahead of `exact` with a short lookahead)
    done: bool = False


class StreamingVocoder:
    """Stateful chunked vocoding: `start(speaker)`, then `feed(state, latents)` per chunk and
    `finish(state)` at the segment end; the returned samples concatenate to `model(latents, speaker)`.

    `lookahead=None` emits only final samples (the delay is the receptive field). A number of
    frames emits, after n frames, every sample up to frame `n - lookahead`, computing the not yet
    final ones as if the segment ended at n (exact once `lookahead >= receptive_field.lookahead`).
    """

    def __init__(self, model: BigVGAN, lookahead: Optional[int] = None):
        self.model, self.lookahead = model, lookahead
        self.receptive_field = receptive_field_of(model)

    @torch.no_grad()
    def start(self, speaker: torch.Tensor, batch: int = 1) -> StreamState:
        """speaker: `[B, 1, S]` embedding (or `[1, 1, S]` for all `batch` items, fed in lockstep)."""
        spk = speaker.transpose(1, 2)
        m = self.model
        conds = [c(spk) for c in m.conds] if m.conds is not None else ()
        empty = speaker.new_zeros(max(batch, speaker.shape[0]), 1, 0)
        return StreamState(_ChainStream(_plan(m, m.cond_layer(spk), conds)), empty)

    @torch.no_grad()
    def feed(self, state: StreamState, latents: torch.Tensor) -> torch.Tensor:
        """latents `[B, n, D]` (the next n frames) -> the samples now due, `[B, 1, m]`."""
        if state.done:
            raise RuntimeError("this stream is finished; start a new one")
        state.frames += latents.shape[1]
        out = [self._exact(state, latents.transpose(1, 2), final=False)]
        due = 0 if self.lookahead is None else max(0, state.frames - self.lookahead) * self.model.hop_length
        if due > state.emitted:   # speculate: the layers' copies flushed as if the segment ended here
            tail = state.net.fork().push(None, final=True)
            out.append(tail[..., state.emitted - state.exact:due - state.exact])
            state.emitted = due
        return torch.cat(out, dim=-1)

    @torch.no_grad()
    def finish(self, state: StreamState) -> torch.Tensor:
        """The remaining samples: the segment ends after the frames fed so far."""
        if state.done:
            raise RuntimeError("this stream is already finished")
        state.done = True
        return self._exact(state, None, final=True) if state.frames else state.empty

    def _exact(self, state: StreamState, x: Optional[torch.Tensor], final: bool) -> torch.Tensor:
        """Push `x [B, D, n]` through the exact pipeline; return its samples not yet emitted."""
        y = state.net.push(x, final)
        if y is None:
            return state.empty
        state.exact += y.shape[-1]
        y = y[..., max(0, y.shape[-1] - (state.exact - state.emitted)):]   # drop those already speculated
        state.emitted = max(state.emitted, state.exact)
        return y
