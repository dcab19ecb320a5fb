"""Beam search as the original runs it (HF transformers 4.36, `num_beams=3, do_sample=False,
length_penalty=0.0`): IndexTTS's default quality mode.

Per step, for every live beam: log-softmax of the logits, then the repetition penalty *on those
log-probs* over the beam's own input ids (fake prompt ids 1 and 8192 included), then the beam's
running score is added. The best 2 * num_beams candidates of all beams are visited in order: a
stop code among the first num_beams ranks closes a hypothesis scored by its total (no length
normalisation), other stop codes are skipped, and the first num_beams other candidates become
the new beams. The search ends once num_beams hypotheses exist and the worst of them is at
least the step's best candidate, or after max_codes codes, when the live beams join the
hypotheses. The best hypothesis wins; a finished one gets its stop code back.
"""

from __future__ import annotations

from typing import Optional

import torch

from indextts.gpt.generation import (PROMPT_PLACEHOLDER_ID, EncodedPrompt, GenerationResult, encode_prompt,
                                     max_codes_for, result_from_raw)
from indextts.gpt.model import TextIds, UnifiedVoice
from indextts.types import SamplingOptions

# HF starts every beam but the first at this score so that step 0 expands one beam only.
_DEAD_BEAM_SCORE = -1e9


class Hypotheses:
    """The best `size` finished sequences with their scores (HF's BeamHypotheses, length
    penalty 0, early_stopping False)."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[tuple[float, list[int], bool]] = []   # (score, codes, finished)
        self.worst = 1e9

    def add(self, codes: list[int], score: float, finished: bool) -> None:
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, codes, finished))
            if len(self.items) > self.size:
                ranked = sorted((s, i) for i, (s, _, _) in enumerate(self.items))
                del self.items[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_candidate: float) -> bool:
        return len(self.items) >= self.size and self.worst >= best_candidate



def beam_search_codes(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds,
                      options: SamplingOptions = SamplingOptions(), num_beams: int = 3, *,
                      prompt: Optional[EncodedPrompt] = None) -> GenerationResult:
    """Beam search over codes for one segment. Uses `options.repetition_penalty` and
    `options.max_codes`; temperature, top-k, top-p and seed do not apply (no sampling).
    cond_latents: [1, 32, D]; text_ids: [L]."""
    codes, _ = beam_search_hypotheses(model, cond_latents, text_ids, options, num_beams, prompt=prompt)[0]
    return result_from_raw(model.cfg, codes)


def beam_search_hypotheses(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds,
                           options: SamplingOptions = SamplingOptions(), num_beams: int = 3, *,
                           prompt: Optional[EncodedPrompt] = None) -> list[tuple[list[int], float]]:
    """Every hypothesis the search kept, best first: (raw codes, score). A finished hypothesis
    ends with the stop code; one still live at max_codes does not. The score is the sum of
    the processed log-probs (HF's `sequences_scores` with length_penalty 0)."""
    hyps = _search(model, cond_latents, text_ids, options, num_beams, prompt)
    stop = model.cfg.stop_mel_token
    ranked = sorted(hyps.items, key=lambda item: item[0])[::-1]
    return [(codes + [stop] if finished else codes, score) for score, codes, finished in ranked]


@torch.no_grad()
def _search(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds, options: SamplingOptions,
            num_beams: int, prompt: Optional[EncodedPrompt]) -> Hypotheses:
    limit = max_codes_for(model, options)
    if prompt is None:
        prompt = encode_prompt(model, cond_latents, text_ids)
    stop, vocab, dev = model.cfg.stop_mel_token, model.cfg.number_mel_codes, model.device
    cache = prompt.cache.copy(prompt.length + limit - 1)
    cache.select(torch.zeros(num_beams, dtype=torch.long, device=dev))
    logits = prompt.start_logits.unsqueeze(0).expand(num_beams, -1)
    beam_scores = torch.zeros(num_beams, device=dev)
    beam_scores[1:] = _DEAD_BEAM_SCORE
    seen = torch.zeros(num_beams, vocab, dtype=torch.bool, device=dev)
    seen[:, [PROMPT_PLACEHOLDER_ID, model.cfg.start_mel_token]] = True
    beams: list[list[int]] = [[] for _ in range(num_beams)]
    hyps = Hypotheses(num_beams)
    penalty = options.repetition_penalty
    for step in range(limit):
        scores = torch.log_softmax(logits.float(), dim=-1)
        if penalty != 1.0:
            scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        totals, flat = torch.topk((scores + beam_scores[:, None]).view(-1), 2 * num_beams)
        chosen: list[tuple[float, int, int]] = []     # (score, code, parent beam)
        for rank, (total, index) in enumerate(zip(totals.tolist(), flat.tolist())):
            parent, code = divmod(index, vocab)
            if code == stop:
                if rank < num_beams:
                    hyps.add(list(beams[parent]), total, finished=True)
            else:
                chosen.append((total, code, parent))
            if len(chosen) == num_beams:
                break
        if hyps.is_done(totals[0].item()):
            return hyps
        parents = torch.tensor([p for _, _, p in chosen], device=dev)
        codes_now = torch.tensor([c for _, c, _ in chosen], device=dev)
        beam_scores = torch.tensor([sc for sc, _, _ in chosen], device=dev)
        beams = [beams[p] + [c] for _, c, p in chosen]
        seen = seen.index_select(0, parents)
        seen[torch.arange(num_beams, device=dev), codes_now] = True
        if step + 1 == limit:
            break
        cache.select(parents)
        x = model.embed_mel(codes_now.unsqueeze(1), torch.full((1,), step + 2, dtype=torch.long, device=dev))
        logits = model.logits(model(x, cache)[:, -1])
    for score, codes in zip(beam_scores.tolist(), beams):   # max_codes reached: live beams compete too
        hyps.add(codes, score, finished=False)
    return hyps
