"""The vocoder stage: BigVGAN, conditioned on each voice's ECAPA speaker embedding."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Union

import torch

from indextts.audio import ReferenceLimits
from indextts.batching import BatchQueue
from indextts.checkpoint import CheckpointInfo, load_vocoder
from indextts.errors import OptionsError
from indextts.scheduling import cpu_gate
from indextts.stages.base import VocoderStage
from indextts.stages.conditioning import KeyedCache, voice_mels, weights_or_uniform
from indextts.types import LatentWindow, VoiceSpec
from indextts.vocoder import fused
from indextts.vocoder.graphs import VocoderGraphs, frame_buckets, window_lengths
from indextts.vocoder.streaming import receptive_field_of

# BigVGAN runs in float32 whatever the GPT's dtype: on an H100 bfloat16 measured no faster and
# 19 dB SNR against float32 (docs/benchmarks.md); on a CPU half precision is slow.
VOCODER_DTYPE = torch.float32

# Mixed-length vocoder batches: the longest item at most this many times the shortest, plus a
# slack in frames so that short chunks (cheap to pad, costly in kernel launches) always share.
MIXED_LENGTH_RATIO = 1.5
MIXED_LENGTH_SLACK = 16
CPU_CALL_WINDOWS = 2      # windows per BigVGAN call on a CPU (each call holds the cores while it runs)
# CUDA-graph frame buckets besides the chunk schedule's windows: every GRAPH_FRAME_STEP frames up to
# GRAPH_MAX_FRAMES (~11 s; whole segments beyond that run eager)
GRAPH_FRAME_STEP = 32
GRAPH_MAX_FRAMES = 256


def _due(window: LatentWindow) -> float:
    return window.deadline if window.deadline is not None else time.time()


class BigVGANStage(VocoderStage):
    """Speaker embedding per voice (cached) and latent windows -> audio.

    Windows are stateless (`LatentWindow`: the frames to emit with their context and lookahead),
    so any replica can vocode any window and a replica's failure loses no stream state. With
    `lookahead=None` the windows cover BigVGAN's receptive field and chunked audio equals
    whole-segment audio; a smaller lookahead emits earlier (error table: docs/streaming.md).

    Concurrent `vocode()` calls are batched: while one BigVGAN call runs, new chunks queue and go
    together in the next (at most `max_batch` per call), so concurrent streams share the
    vocoder's per-call cost. Items of equal length are stacked, no padding; a batched
    convolution may still sum in another order than an unbatched one, so results can differ in
    the last float bit (at most one int16 step after conversion). With `mixed_length_batches`,
    items of different lengths share a call too, right-padded with per-item lengths
    (`BigVGAN.forward(..., lengths)`): equal to the unbatched result up to float rounding, but
    a different computation from the unpadded one, hence opt-in.

    `graphs` (CUDA only, `capture_graphs()`): calls replay CUDA graphs captured per (batch, frame)
    bucket (`indextts.vocoder.graphs`); windows of different lengths then share a call within a
    bucket (right-padded with per-item lengths, as `mixed_length_batches`)."""

    def __init__(self, model, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64,
                 max_workers: int = 2, max_batch: int = 32, mixed_length_batches: bool = False,
                 lookahead: Optional[int] = None, graphs: Optional[VocoderGraphs] = None):
        if max_batch < 1:
            raise OptionsError(f"max_batch must be at least 1, got {max_batch}")
        if lookahead is not None and lookahead < 0:
            raise OptionsError(f"vocoder lookahead must be at least 0 frames, got {lookahead}")
        self.lookahead = lookahead   # None: the receptive field's (exact chunked audio)
        self.reach = receptive_field_of(model)
        self.model = model
        self.limits = limits
        self.max_batch = max_batch
        self.mixed_length_batches = mixed_length_batches
        self.graphs = graphs
        self._voices = KeyedCache(cache_size)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vocoder")
        # Up to max_batch waiting windows per call, the most urgent first (their deadlines); on a
        # CPU few per call, so that an urgent window never waits behind a long call.
        on_cpu = next(model.parameters()).device.type == "cpu"
        self._queue = BatchQueue(self._vocode_items,
                                 max_batch=min(max_batch, CPU_CALL_WINDOWS) if on_cpu else max_batch)

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "BigVGANStage":
        model = load_vocoder(info, options.torch_device, VOCODER_DTYPE)
        stage = cls(model, options.reference_limits, options.voice_cache_size,
                    max_batch=options.vocoder_max_batch, mixed_length_batches=options.vocoder_mixed_length_batches,
                    lookahead=options.vocoder_lookahead)
        if options.vocoder_cuda_graphs and stage.device.type == "cuda":
            stage.capture_graphs(options.chunk_schedule.sizes or ())
        return stage

    def capture_graphs(self, chunk_sizes: Sequence[int]) -> None:
        """Capture CUDA graphs for batches of 1, 2, 4, ... up to `max_batch` windows and the frame
        buckets: the windows `chunk_sizes` give (no padding) and every GRAPH_FRAME_STEP frames up to
        GRAPH_MAX_FRAMES. Needs the fused activation (the eager fallback's per-item loop reads
        lengths on the host, which a graph cannot)."""
        if not fused.available(next(self.model.parameters())):
            raise OptionsError("vocoder CUDA graphs need a CUDA device and Triton (the fused activation)")
        context, lookahead = self.reach.context, self.reach.lookahead if self.lookahead is None else self.lookahead
        exact = window_lengths(chunk_sizes, context, lookahead) if chunk_sizes else []
        batches = [2 ** k for k in range(self.max_batch.bit_length()) if 2 ** k < self.max_batch] + [self.max_batch]
        graphs = VocoderGraphs(self.model, batches, frame_buckets(exact, GRAPH_FRAME_STEP, GRAPH_MAX_FRAMES))
        graphs.capture()
        self.graphs = graphs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def speaker_embedding(self, voice: VoiceSpec) -> torch.Tensor:
        """`[1, 1, S]`: the (weighted) mean of the references' ECAPA embeddings, computed once."""
        return self._voices.get_or_compute(voice.key, lambda: self._compute_speaker(voice))

    @torch.no_grad()
    def _compute_speaker(self, voice: VoiceSpec) -> torch.Tensor:
        embs = [self.model.speaker_embedding(mel.to(self.device, self.dtype)) for mel in voice_mels(voice, self.limits)]
        w = weights_or_uniform(voice.weights, len(embs)).to(self.device, torch.float32)
        return (torch.stack(embs).float() * w.view(-1, 1, 1, 1)).sum(0).to(self.dtype)

    def _groups(self, latents: Sequence[torch.Tensor]) -> list[list[int]]:
        """Indices of the non-empty items, grouped into BigVGAN calls of at most `max_batch`.
        Equal lengths only, unless `mixed_length_batches`: then lengths sorted, and a call's
        longest item at most `MIXED_LENGTH_RATIO` x its shortest + `MIXED_LENGTH_SLACK` frames,
        which bounds the padding. With graphs, items of one frame bucket share a call."""
        order = sorted((i for i, lat in enumerate(latents) if lat.shape[0] > 0), key=lambda i: latents[i].shape[0])
        groups: list[list[int]] = []
        for i in order:
            n = latents[i].shape[0]
            if groups and len(groups[-1]) < self.max_batch:
                first = latents[groups[-1][0]].shape[0]
                if n == first or (self.mixed_length_batches and n <= MIXED_LENGTH_RATIO * first + MIXED_LENGTH_SLACK) \
                        or self._same_graph(first, n):
                    groups[-1].append(i)
                    continue
            groups.append([i])
        return groups

    def _same_graph(self, first: int, n: int) -> bool:
        """Whether windows of `first` and `n` frames fall in one captured frame bucket."""
        if self.graphs is None:
            return False
        a, b = self.graphs.bucket(1, first), self.graphs.bucket(1, n)
        return a is not None and a == b

    @torch.no_grad()
    def vocode_batch_sync(self, voices: Sequence[VoiceSpec],
                          windows: Sequence[Union[LatentWindow, torch.Tensor]]) -> list[torch.Tensor]:
        """Each window (or whole segment's `[n, D]` latents) -> its emitted frames'
        `[emit * 1024]` float32 samples on the CPU (see the class docstring for how items share calls)."""
        windows = [w if isinstance(w, LatentWindow) else LatentWindow(w, 0, w.shape[0]) for w in windows]
        latents = [w.latents for w in windows]
        out: list[torch.Tensor] = [torch.zeros(0)] * len(windows)
        hop = self.model.hop_length
        for idx in self._groups(latents):
            lengths = [latents[i].shape[0] for i in idx]
            spk = torch.cat([self.speaker_embedding(voices[i]) for i in idx])               # [B, 1, S]
            if self.graphs is not None and self.graphs.bucket(len(idx), max(lengths)) is not None:
                wav = self.graphs.run([latents[i] for i in idx], spk)
            else:
                lat = torch.nn.utils.rnn.pad_sequence([latents[i] for i in idx], batch_first=True)  # right-padded
                lat = lat.to(self.device, self.dtype)                                            # [B, n_max, D]
                padded = len(set(lengths)) > 1
                wav = self.model(lat, spk, torch.tensor(lengths) if padded else None)[:, 0].float().cpu()
            for row, i in enumerate(idx):
                w = windows[i]   # its own storage, not a view of the batch
                out[i] = wav[row, w.left * hop:(w.left + w.emit) * hop].clone()
        return out

    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        if window.emit == 0:
            return torch.zeros(0)
        return await self._queue.submit((voice, window), window.deadline)

    async def window_frames(self) -> tuple[int, int]:
        return self.reach.context, self.reach.lookahead if self.lookahead is None else self.lookahead

    async def _vocode_items(self, items: list[tuple[VoiceSpec, LatentWindow]]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._vocode_in_turn,
                                          [v for v, _ in items], [w for _, w in items])

    def _vocode_in_turn(self, voices: list[VoiceSpec], windows: list[LatentWindow]) -> list[torch.Tensor]:
        """On a CPU, small calls one at a time through the process's gate, in deadline order with
        the GPT's decode steps (indextts.scheduling.cpu_gate): batching gains little there, and a
        call holds the cores until it ends."""
        if self.device.type != "cpu":
            return self.vocode_batch_sync(voices, windows)
        out: list[torch.Tensor] = [torch.zeros(0)] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: _due(windows[i]))
        for start in range(0, len(order), CPU_CALL_WINDOWS):
            part = order[start:start + CPU_CALL_WINDOWS]
            # not held back by reservations: urgent windows may be queued behind this call
            with cpu_gate().turn(_due(windows[part[0]]), held_back=False):
                for i, samples in zip(part, self.vocode_batch_sync([voices[i] for i in part],
                                                                   [windows[i] for i in part])):
                    out[i] = samples
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
