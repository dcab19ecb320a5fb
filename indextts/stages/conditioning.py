"""Voice conditioning: reference mels -> the GPT's conditioning latents, cached per voice."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Callable, Optional, Sequence

import torch

from indextts.audio import ReferenceLimits, reference_mel
from indextts.errors import AudioError
from indextts.types import VoiceSpec


class KeyedCache:
    """A small thread-safe LRU: `get_or_compute(key, fn)`. Concurrent misses on one key compute
    once: the first caller computes, the others wait for its result (or its error)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: "collections.OrderedDict[str, object]" = collections.OrderedDict()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: str, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = concurrent.futures.Future()
        if not owner:
            return pending.result()
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                del self._pending[key]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._pending[key]
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        pending.set_result(value)
        return value

    def __len__(self) -> int:
        return len(self._items)


def voice_mels(voice: VoiceSpec, limits: ReferenceLimits) -> list[torch.Tensor]:
    """`[1, 100, frames]` log-mel of each reference of `voice`. Errors name the voice and the
    file's name, never the directory it lies in."""
    try:
        return [reference_mel(ref, limits) for ref in voice.references]
    except AudioError as e:
        if not voice.name:
            raise
        raise AudioError(f"voice {voice.name!r}: {e}") from e


def weights_or_uniform(weights: Optional[Sequence[float]], n: int) -> torch.Tensor:
    """Normalised mixing weights `[n]` (uniform when not given)."""
    if weights is None:
        return torch.full((n,), 1.0 / n)
    w = torch.tensor([float(x) for x in weights])
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("mixing weights must be non-negative and not all zero")
    return w / w.sum()


class VoiceConditioner:
    """Conditioning latents per voice: reference mels through the conformer + perceiver, the
    references averaged (optionally weighted), cached by the voice's content key."""

    def __init__(self, model, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64):
        self.model = model          # anything with get_conditioning(mel, lengths), device, dtype
        self.limits = limits
        self._cache = KeyedCache(cache_size)

    def __call__(self, voice: VoiceSpec) -> torch.Tensor:
        """`[1, 32, D]` conditioning latents of `voice`, computed once per key."""
        return self._cache.get_or_compute(voice.key, lambda: self._compute(voice))

    @torch.no_grad()
    def _compute(self, voice: VoiceSpec) -> torch.Tensor:
        from indextts.gpt.generation import average_conditioning
        latents = []
        for mel in voice_mels(voice, self.limits):
            mel = mel.to(self.model.device, self.model.dtype)
            lengths = torch.tensor([mel.shape[-1]], device=self.model.device)
            latents.append(self.model.get_conditioning(mel, lengths))
        return average_conditioning(latents, voice.weights)
