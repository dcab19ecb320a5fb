"""Typed values exchanged between the stages (frontend -> GPT -> vocoder -> audio).

Shapes are written next to each field; `D` is the GPT width (`model_dim`), `S` the speaker
embedding width.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from indextts.errors import OptionsError


# Sampling bounds, defined once: SamplingOptions validates against them and the HTTP schema is
# built from them, so a request is refused at the edge with the same bounds the engines accept.
TEMPERATURE_MAX = 2.0          # the hottest vLLM's SamplingParams accepts (the production engine)
TOP_K_MAX = 8194               # the mel code vocabulary (number_mel_codes): a larger k keeps every code
TOP_P_MAX = 1.0                # top_p lies in (0, TOP_P_MAX]
REPETITION_PENALTY_MAX = 100.0
SEED_LIMIT = 2**63             # seeds lie in [0, SEED_LIMIT): a signed 64-bit integer
NUM_BEAMS_MAX = 8


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingOptions:
    """How codes are chosen. Defaults are the original's sampling defaults; bounds are the
    module's `*_MAX` / `SEED_LIMIT` constants.

    `greedy=True` is the original's deterministic mode: argmax, no sampling; temperature, top-k
    and top-p are then ignored, the repetition penalty is not. `max_codes=None` means the
    checkpoint's `max_mel_tokens`.
    """

    temperature: float = 1.0
    top_k: int = 30
    top_p: float = 0.8
    repetition_penalty: float = 10.0
    seed: Optional[int] = None
    greedy: bool = False
    max_codes: Optional[int] = None
    # Benchmarks: random weights rarely emit the stop code, so a run may generate exactly
    # `max_codes` codes, treating the stop code as an ordinary code.
    ignore_stop: bool = False
    # Beam search (the original's quality mode is num_beams=3 with greedy=True); PyTorch engine only.
    num_beams: int = 1

    def __post_init__(self):
        if not self.greedy and not (_is_number(self.temperature) and 0.0 < self.temperature <= TEMPERATURE_MAX):
            raise OptionsError(f"temperature must be in (0, {TEMPERATURE_MAX}], got {self.temperature!r} "
                               "(use greedy=True for deterministic decoding)")
        if not (_is_int(self.top_k) and 0 <= self.top_k <= TOP_K_MAX):
            raise OptionsError(f"top_k must be an integer in [0, {TOP_K_MAX}] (0 disables it), "
                               f"got {self.top_k!r}")
        if not (_is_number(self.top_p) and 0.0 < self.top_p <= TOP_P_MAX):
            raise OptionsError(f"top_p must be in (0, {TOP_P_MAX}], got {self.top_p!r}")
        if not (_is_number(self.repetition_penalty) and 0.0 < self.repetition_penalty <= REPETITION_PENALTY_MAX):
            raise OptionsError(f"repetition_penalty must be in (0, {REPETITION_PENALTY_MAX}], "
                               f"got {self.repetition_penalty!r}")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed < SEED_LIMIT):
            raise OptionsError(f"seed must be an integer in [0, {SEED_LIMIT}), got {self.seed!r}")
        if self.max_codes is not None and (not isinstance(self.max_codes, int) or self.max_codes < 1):
            raise OptionsError(f"max_codes must be a positive integer, got {self.max_codes!r}")
        if not (_is_int(self.num_beams) and 1 <= self.num_beams <= NUM_BEAMS_MAX):
            raise OptionsError(f"num_beams must be an integer in [1, {NUM_BEAMS_MAX}], got {self.num_beams!r}")
        if self.num_beams > 1 and not self.greedy:
            raise OptionsError("beam search is deterministic: use num_beams > 1 with greedy=True (no sampling)")
        if self.ignore_stop and self.max_codes is None:
            raise OptionsError("ignore_stop needs max_codes (the forced number of codes)")

    @classmethod
    def deterministic(cls, **overrides) -> "SamplingOptions":
        """The original's `do_sample=False, num_beams=1, repetition_penalty=10` mode."""
        return cls(greedy=True, **overrides)


@dataclass(frozen=True)
class Segment:
    """One piece of text the GPT synthesises in one go."""

    ids: tuple[int, ...]          # BPE ids, without start/stop text tokens
    text: str = ""                # the pieces joined, for logs and progress bars
    # Wall-clock time (time.time()) by which its audio is due; schedulers take earlier ones
    # first (indextts.scheduling). None: due now.
    deadline: Optional[float] = None


@dataclass(frozen=True)
class FrontendResult:
    normalized: str
    pieces: tuple[str, ...]
    ids: tuple[int, ...]
    segments: tuple[Segment, ...]


@dataclass(frozen=True, eq=False)
class Voice:
    """A voice ready for synthesis: computed once from one or more references, then reused.

    `cond_latents` feed the GPT, `speaker_embedding` feeds the vocoder; several references are
    averaged (optionally weighted) in both.
    """

    cond_latents: torch.Tensor        # [1, 32, D] float
    speaker_embedding: torch.Tensor   # [1, 1, S] float
    name: str = ""


@dataclass(frozen=True, eq=False)
class CodeChunk:
    """Consecutive codes of one segment with their latents: what the vocoder consumes.

    Codes are the original's post-processed codes (long silences shortened, stop code removed);
    `start` is the index of the first of them in the segment. The segment's last chunk has
    `final=True` and says whether the stop code came (`stopped`; False: hit the code limit)."""

    codes: torch.Tensor               # [n] int64
    latents: torch.Tensor             # [n, D] float32, on the CPU
    start: int = 0
    final: bool = False
    stopped: bool = False


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Float PCM in [-1, 1] at `sample_rate`."""

    samples: torch.Tensor             # [n] float32
    sample_rate: int = 24000
    final: bool = False
    metadata: dict = field(default_factory=dict)


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


@dataclass(frozen=True)
class ChunkSchedule:
    """How the GPT stage cuts a segment into `CodeChunk`s: chunk sizes in codes (after silence
    shrinking), the last size repeating: `ChunkSchedule((8, 24, 48))` gives 8, 24, 48, 48, ...
    codes; the segment's last chunk holds what is left. `sizes=None` (`ChunkSchedule.whole()`)
    yields each segment as one chunk at its end."""

    sizes: Optional[tuple[int, ...]] = None

    def __post_init__(self):
        if self.sizes is None:
            return
        sizes = tuple(self.sizes) if isinstance(self.sizes, (list, tuple)) else None
        if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
            raise OptionsError(f"chunk sizes must be a non-empty sequence of positive integers, got {self.sizes!r}")
        object.__setattr__(self, "sizes", sizes)     # a list given is stored as a tuple: hashable

    @classmethod
    def whole(cls) -> "ChunkSchedule":
        """Each segment as one chunk."""
        return cls()

    @property
    def is_whole(self) -> bool:
        return self.sizes is None

    @classmethod
    def streaming(cls) -> "ChunkSchedule":
        """The default: a first chunk just past the vocoder's exact lookahead (34 frames), so
        that the first audio comes early, then growing chunks, so that each later vocoder window
        is mostly new frames (see docs/streaming.md)."""
        return cls(STREAMING_CHUNK_SIZES)

    @classmethod
    def parse(cls, text: str) -> "ChunkSchedule":
        """"40,24,48" -> those sizes; "whole" -> `whole()` (command lines and config files)."""
        text = text.strip().lower()
        if text == "whole":
            return cls.whole()
        try:
            return cls(tuple(int(part) for part in text.split(",")))
        except ValueError as e:
            raise OptionsError(f"chunk schedule must be 'whole' or comma-separated positive integers, "
                               f"got {text!r}") from e

    def size(self, index: int) -> Optional[int]:
        """Codes in chunk `index` (0-based) unless it is the segment's last; None: no limit."""
        if self.sizes is None:
            return None
        return self.sizes[min(index, len(self.sizes) - 1)]

    def __str__(self) -> str:
        return "whole" if self.sizes is None else ",".join(map(str, self.sizes))


STREAMING_CHUNK_SIZES = (40, 24, 48, 96)


@dataclass(frozen=True, eq=False)
class LatentWindow:
    """Latent frames cut from one segment for the vocoder: the samples of frames
    `[left, left + emit)` of `latents` are wanted; the frames before them are context and the
    frames after them lookahead (BigVGAN is non-causal: see `indextts.vocoder.streaming`). A
    window that starts or ends where its segment does has no context or lookahead there."""

    latents: torch.Tensor             # [left + emit + right, D] float32, on the CPU
    left: int
    emit: int
    deadline: Optional[float] = None  # when its audio is due (time.time()); as Segment.deadline

    def __post_init__(self):
        if not (0 <= self.left and 0 <= self.emit and self.left + self.emit <= self.latents.shape[0]):
            raise ValueError(f"window [{self.left}, {self.left + self.emit}) does not fit "
                             f"{self.latents.shape[0]} frames")
