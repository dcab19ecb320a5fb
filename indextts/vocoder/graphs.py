"""BigVGAN calls replayed as CUDA graphs: one graph per (batch bucket, frame bucket).

An eager BigVGAN-1.5 call is about a thousand kernel launches, so a small call is bound by the
host, not the GPU. `VocoderGraphs` captures the model once per bucket at warm-up (all graphs in
one memory pool: they never run at the same time) and replays it: a call copies its latents and
speaker embeddings into the bucket's static inputs, right-padded with per-item lengths
(`BigVGAN.forward(..., lengths)`: each item's samples are what it alone would give, up to float
rounding), replays, and reads the first rows back. Calls larger than the largest bucket run eager.
"""

from __future__ import annotations

import bisect
import threading
from typing import Sequence

import torch

from indextts.vocoder.bigvgan import BigVGAN


def window_lengths(chunk_sizes: Sequence[int], context: int, lookahead: int) -> list[int]:
    """The window lengths (frames) a chunk schedule gives inside a segment: the first chunk has no
    left context, the others `context + chunk + lookahead` (the segment's last, shorter windows
    fall into the next larger bucket)."""
    later = chunk_sizes[1:] or chunk_sizes        # the last size repeats
    return sorted({chunk_sizes[0] + lookahead} | {context + n + lookahead for n in later})


def frame_buckets(exact: Sequence[int], step: int, largest: int) -> list[int]:
    """Frame buckets: the `exact` window lengths (no padding for the common windows) and every
    multiple of `step` up to `largest` (bounded padding for the rest)."""
    return sorted(set(exact) | set(range(step, largest + 1, step)))


class VocoderGraphs:
    """CUDA graphs of `model` for each batch in `batches` and frame count in `frames`.

    `run(latents, speaker)` vocodes up to `max(batches)` items of at most `max(frames)` frames
    in one replay of the smallest bucket that holds them. Thread-safe: one replay at a time (the
    static inputs are shared by all callers)."""

    def __init__(self, model: BigVGAN, batches: Sequence[int], frames: Sequence[int]):
        self.model = model
        self.batches = sorted(set(batches))
        self.frames = sorted(set(frames))
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def bucket(self, batch: int, frames: int) -> tuple[int, int] | None:
        """The smallest (batch, frames) bucket holding a call, or None (run it eager)."""
        b = bisect.bisect_left(self.batches, batch)
        f = bisect.bisect_left(self.frames, frames)
        if b == len(self.batches) or f == len(self.frames):
            return None
        return self.batches[b], self.frames[f]

    @torch.no_grad()
    def capture(self) -> None:
        """Capture every bucket, largest first (the shared pool is sized by the first capture)."""
        cfg = self.model.cfg
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for b in reversed(self.batches):
            for n in reversed(self.frames):
                inputs = {"latents": torch.zeros(b, n, cfg.gpt_dim, device=self.device, dtype=self.dtype),
                          "speaker": torch.zeros(b, 1, cfg.speaker_embedding_dim, device=self.device, dtype=self.dtype),
                          "lengths": torch.full((b,), n, device=self.device, dtype=torch.int64)}
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):     # warm-up off the capture: autotuning, Triton compiles
                    self.model(inputs["latents"], inputs["speaker"], inputs["lengths"])
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = self.model(inputs["latents"], inputs["speaker"], inputs["lengths"])
                self._graphs[(b, n)] = (graph, inputs, out)
        torch.cuda.synchronize(self.device)

    @property
    def captured(self) -> int:
        return len(self._graphs)

    @torch.no_grad()
    def run(self, latents: Sequence[torch.Tensor], speaker: torch.Tensor) -> torch.Tensor:
        """latents: `[n_i, D]` per item; speaker: `[B, 1, S]`. Returns float32 `[B, max(n_i) * hop]`
        on the CPU (item i's samples past `n_i * hop` are padding). Raises KeyError when no bucket
        holds the call (check `bucket()` first)."""
        longest = max(lat.shape[0] for lat in latents)
        key = self.bucket(len(latents), longest)
        if key is None or key not in self._graphs:
            raise KeyError(f"no captured graph for {len(latents)} x {longest} frames")
        graph, inputs, out = self._graphs[key]
        count = len(latents)
        padded = torch.nn.utils.rnn.pad_sequence(list(latents), batch_first=True)   # [count, longest, D]
        # Only the rows and frames this call uses are written: the model zeroes each item's frames
        # past its length, and the rows past `count` (stale inputs) are computed and dropped.
        with self._lock:
            inputs["latents"][:count, :longest].copy_(padded, non_blocking=True)
            inputs["speaker"][:count].copy_(speaker, non_blocking=True)
            lengths = torch.tensor([lat.shape[0] for lat in latents] + [key[1]] * (key[0] - count))
            inputs["lengths"].copy_(lengths, non_blocking=True)
            graph.replay()
            return out[:count, 0, :longest * self.model.hop_length].float().cpu()
