"""How the next code is chosen from logits, built from small named parts.

The chain reproduces Hugging Face `generate` (4.36) as the original calls it: the repetition
penalty first, then, when sampling, the warpers temperature -> top-k -> top-p, then either
argmax (greedy) or a draw from the softmax. Every part works on one row of scores `[V]`.

A `CodeSampler` is per-request state (penalised ids, random generator); make one per call and
never share it between requests.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

import torch

from indextts.types import SamplingOptions


class ScoreTransform(Protocol):
    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: [V] float -> [V] float (a new tensor; the input is left alone)."""


class RepetitionPenalty:
    """HF semantics: a penalised id's score is multiplied by p when negative, divided by p
    otherwise. Which ids are penalised is the caller's business (every id of the model input)."""

    def __init__(self, penalty: float):
        self.penalty = float(penalty)

    def __call__(self, scores: torch.Tensor, penalised: torch.Tensor) -> torch.Tensor:
        """scores: [V]; penalised: [V] bool mask or [n] int64 ids (each id once) -> [V]."""
        ids = penalised.nonzero().squeeze(1) if penalised.dtype == torch.bool else penalised
        hit = scores[ids]
        out = scores.clone()
        out[ids] = torch.where(hit < 0, hit * self.penalty, hit / self.penalty)
        return out


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    """Keeps every code scoring at least the k-th best score (ties at the boundary survive)."""

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        k = min(max(self.k, 1), scores.size(-1))
        kth = torch.topk(scores, k).values[-1]
        return scores.masked_fill(scores < kth, -float("inf"))


class TopP:
    """Nucleus filter: drops the least likely codes whose cumulative probability (summed from
    the least likely up) stays within 1 - p; the most likely code always survives."""

    def __init__(self, p: float):
        self.p = float(p)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        # Codes already filtered out (-inf, e.g. by top-k) have probability 0 and sort first,
        # so they change no cumulative sum: sorting only the rest gives the same result and
        # is much cheaper than sorting all 8194 codes.
        alive = torch.isfinite(scores).nonzero().squeeze(1)
        if alive.numel() == scores.numel():
            return self._filter(scores)
        out = torch.full_like(scores, -float("inf"))
        out[alive] = self._filter(scores[alive])
        return out

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1.0 - self.p)
        drop_sorted[-1] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        return scores.masked_fill(drop, -float("inf"))


def warpers_for(options: SamplingOptions) -> list[ScoreTransform]:
    """The sampling warpers HF adds for these options, in HF's order (none when greedy)."""
    if options.greedy:
        return []
    warpers: list[ScoreTransform] = []
    if options.temperature != 1.0:
        warpers.append(Temperature(options.temperature))
    if options.top_k:
        warpers.append(TopK(options.top_k))
    if options.top_p < 1.0:
        warpers.append(TopP(options.top_p))
    return warpers


def make_generator(seed: Optional[int], device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator: seeded when asked, else from a non-deterministic source (never the
    global RNG, so concurrent requests cannot disturb each other's draws)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class CodeSampler:
    """Chooses one code per step for one request.

    `initial_ids` are the ids the original's model input holds before the first code (its fake
    prompt ids); they and every chosen code are penalised from then on.
    """

    def __init__(self, options: SamplingOptions, vocab_size: int, initial_ids: Iterable[int],
                 device: torch.device | str = "cpu"):
        self.penalty = RepetitionPenalty(options.repetition_penalty) if options.repetition_penalty != 1.0 else None
        self.warpers = warpers_for(options)
        self.generator = None if options.greedy else make_generator(options.seed, device)
        self._seen = set(initial_ids)
        self._penalised = torch.tensor(sorted(self._seen), dtype=torch.long, device=device)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw logits [V] -> the scores the choice is made from [V] (penalty, then warpers)."""
        scores = logits.float()
        if self.penalty is not None:
            scores = self.penalty(scores, self._penalised)
        for warp in self.warpers:
            scores = warp(scores)
        return scores

    def choose(self, logits: torch.Tensor) -> int:
        """Picks the next code from raw logits [V] and records it as seen."""
        scores = self.scores(logits)
        code = int(torch.argmax(scores)) if self.generator is None else draw(scores, self.generator)
        if code not in self._seen:
            self._seen.add(code)
            self._penalised = torch.cat([self._penalised, self._penalised.new_tensor([code])])
        return code


def draw(scores: torch.Tensor, generator: torch.Generator) -> int:
    """One code from softmax(scores) [V]. Only codes still alive (finite) take part in the draw:
    the same distribution as drawing over all V, at a fraction of the cost after top-k."""
    alive = torch.isfinite(scores).nonzero().squeeze(1)
    probs = scores[alive].softmax(dim=-1)
    return int(alive[torch.multinomial(probs, 1, generator=generator)])

