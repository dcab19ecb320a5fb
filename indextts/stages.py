"""The interfaces of the three stages, shared by the single-process pipeline and the Serve graph.

Every stage is an object with async methods; streaming stages are async generators. The Serve
deployments in `serve_app/` are thin shims over objects implementing these protocols, so the same
code runs in one process (`indextts.pipeline`) and as a Ray Serve graph.

Voices travel between stages as a `VoiceSpec` (paths + weights + a content key), never as tensors:
each stage computes its own part of the voice (the GPT stage the conditioning latents, the vocoder
the speaker embedding) once per key and caches it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional, Protocol, Sequence

import torch

from indextts.types import CodeChunk, FrontendResult, SamplingOptions, Segment


@dataclass(frozen=True)
class VoiceSpec:
    """One or more reference recordings that make up a voice, with optional mixing weights."""

    references: tuple[str, ...]              # absolute paths of reference audio files
    weights: Optional[tuple[float, ...]] = None
    name: str = ""

    def __post_init__(self):
        if not self.references:
            raise ValueError("a voice needs at least one reference recording")
        if self.weights is not None and len(self.weights) != len(self.references):
            raise ValueError("give one weight per reference")

    @functools.cached_property
    def key(self) -> str:
        """Content key: the same recordings and weights give the same key, whatever their names."""
        h = hashlib.sha256()
        for ref in self.references:
            h.update(hashlib.sha256(Path(ref).read_bytes()).digest())
        h.update(repr(self.weights).encode())
        return h.hexdigest()[:32]


class FrontendStage(Protocol):
    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult: ...


class GPTStage(Protocol):
    def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions,
                 partial: bool = True) -> AsyncIterator[CodeChunk]:
        """Codes as they are produced; the final chunk carries the segment's latents (and every
        code). `partial=False`: the final chunk only, for callers that do not stream codes."""
        ...


class VocoderStage(Protocol):
    async def vocode(self, voice: VoiceSpec, latents: torch.Tensor) -> torch.Tensor:
        """`[n, D]` latents -> `[n * 1024]` float32 samples at 24 kHz."""
        ...


def weights_or_uniform(weights: Optional[Sequence[float]], n: int) -> torch.Tensor:
    """Normalised mixing weights `[n]` (uniform when not given)."""
    if weights is None:
        return torch.full((n,), 1.0 / n)
    w = torch.tensor([float(x) for x in weights])
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("mixing weights must be non-negative and not all zero")
    return w / w.sum()
