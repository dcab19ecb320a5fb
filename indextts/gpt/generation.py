"""Code generation and the latent pass with the PyTorch UnifiedVoice (reference and CPU engine).

Conventions reproduced from the original (index-tts f017ab2 + HF transformers 4.36):

- Prompt: `[cond latents] + text` (see `UnifiedVoice.prompt_embeddings`), then the start code
  8192 at mel position 0. The prompt runs through the GPT once; decoding feeds one code a step
  through a per-call KV cache.
- Generated code k is fed back at mel position k + 2 (row 1 is never used while generating);
  the latent pass gives the same code position k + 1. Both are inherited quirks.
- The repetition penalty covers every id of the original's model input, whose prompt part is
  fake ids `[1] * P + [8192]`: codes 1 and 8192 are penalised from the first step.
- Generation stops at the stop code (kept in `codes_raw`) or after `max_codes` codes
  (`ignore_stop=True`, an engine argument for random-weight checkpoints, always runs to `max_codes`).
- `remove_long_silence` then shrinks runs of the silence code and cuts at the stop code.

Everything here is a function of its arguments; requests never share mutable state, so the
functions may run concurrently on one model from several threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from indextts.config import GPTConfig
from indextts.errors import OptionsError, VoiceError
from indextts.gpt.kv_cache import KVCache
from indextts.gpt.model import TextIds, UnifiedVoice
from indextts.gpt.sampling import CodeSampler
from indextts.types import SamplingOptions

logger = logging.getLogger(__name__)

# The original hands HF `input_ids = ones(P) + [start code]` as a stand-in for the prompt
# embeddings; the 1s (a literal, not a config value) therefore count as "seen" ids.
PROMPT_PLACEHOLDER_ID = 1
SILENT_CODE = 52
MAX_SILENT_CODES = 30      # more silent codes than this in a raw row (anywhere) trigger the shrinking
KEEP_SILENT_RUN = 10       # codes kept of each run of silent codes when shrinking


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """A prompt after one pass through the GPT; shared read-only by the calls that use it.

    `cache` holds the prompt and the start code (P + 1 positions); `start_hidden` is the
    final-normed hidden state at the start code [D] (also the first latent) and `start_logits`
    the first step's raw logits [V].
    """

    cache: KVCache
    start_hidden: torch.Tensor
    start_logits: torch.Tensor

    @property
    def length(self) -> int:
        return self.cache.length


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """The codes of one segment (CPU tensors)."""

    codes_raw: torch.Tensor   # [n] int64: as generated, stop code included when produced
    codes: torch.Tensor       # [N] int64: after remove_long_silence, stop code excluded
    stopped: bool             # the stop code came within max_codes


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One item of `generate_codes_batch`."""

    cond_latents: torch.Tensor          # [1, 32, D]
    text_ids: TextIds                   # [L] BPE ids of one segment, without start/stop
    options: SamplingOptions = SamplingOptions()


# -- prompt -----------------------------------------------------------------------------------

def prompt_sequence(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds) -> torch.Tensor:
    """The full first input: prompt prefix + start code at mel position 0 -> [1, P + 1, D]."""
    _check_cond(model, cond_latents)
    start = model.embed_mel(torch.tensor([[model.cfg.start_mel_token]], device=model.device),
                            torch.zeros(1, dtype=torch.long, device=model.device))
    return torch.cat([model.prompt_embeddings(cond_latents, text_ids), start], dim=1)


@torch.no_grad()
def encode_prompt(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds) -> EncodedPrompt:
    """Runs the prompt (cond latents [1, 32, D], text ids [L]) through the GPT once."""
    x = prompt_sequence(model, cond_latents, text_ids)
    cache = model.new_cache(1, x.size(1))
    hidden = model(x, cache)[0, -1]
    return EncodedPrompt(cache, hidden, model.logits(hidden))


@torch.no_grad()
def _encode_prompts(model: UnifiedVoice, requests: Sequence[GenerationRequest],
                    capacity_after: int) -> tuple[KVCache, torch.Tensor]:
    """Left-pads the prompts of several requests into one batch and runs them at once.
    Returns the cache (room for `capacity_after` more positions) and first logits [B, V]."""
    seqs = [prompt_sequence(model, r.cond_latents, r.text_ids)[0] for r in requests]
    width = max(s.size(0) for s in seqs)
    x = seqs[0].new_zeros(len(seqs), width, seqs[0].size(1))
    valid = torch.zeros(len(seqs), width, dtype=torch.bool, device=model.device)
    for i, s in enumerate(seqs):
        x[i, width - s.size(0):] = s
        valid[i, width - s.size(0):] = True
    cache = model.new_cache(len(seqs), width + capacity_after)
    cache.key_valid = None if bool(valid.all()) else valid
    hidden = model(x, cache)[:, -1]
    return cache, model.logits(hidden)


# -- decoding ---------------------------------------------------------------------------------

def _decode(model: UnifiedVoice, cache: KVCache, logits: torch.Tensor, samplers: list[CodeSampler],
            options: list[SamplingOptions], ignore_stop: bool = False) -> Iterator[tuple[int, int]]:
    """Core loop. cache: B rows holding their prompts; logits: [B, V] of the first step.
    Yields (row, code) as codes are chosen; finished rows leave the batch."""
    stop = model.cfg.stop_mel_token
    limits = [max_codes_for(model, o) for o in options]
    rows = list(range(len(samplers)))          # batch position -> request row
    step = 0
    while rows:
        codes, keep = [], []
        for pos, row in enumerate(rows):
            code = samplers[row].choose(logits[pos])
            yield row, code
            if code == stop and not ignore_stop:
                continue
            if step + 1 >= limits[row]:
                if not ignore_stop:
                    where = f" (batch row {row})" if len(samplers) > 1 else ""
                    logger.warning("no stop code within %d codes%s; the audio may end abruptly. Shorten the "
                                   "segment or raise max_codes", limits[row], where)
                continue
            codes.append(code)
            keep.append(pos)
        if len(keep) < len(rows):
            if keep:
                cache.select(torch.tensor(keep, device=model.device))
            rows = [rows[p] for p in keep]
        if not rows:
            return
        position = torch.full((1,), step + 2, dtype=torch.long, device=model.device)
        x = model.embed_mel(torch.tensor(codes, device=model.device).unsqueeze(1), position)
        logits = model.logits(model(x, cache)[:, -1])
        step += 1


def max_codes_for(model: UnifiedVoice, options: SamplingOptions) -> int:
    """The most codes one generation with `options` may produce (stop code included)."""
    return code_limit(model.cfg, options)


def code_limit(cfg: GPTConfig, options: SamplingOptions) -> int:
    """`options.max_codes`, or the checkpoint's limit; more than the mel position table allows is an error."""
    most = cfg.max_generated_codes
    limit = options.max_codes if options.max_codes is not None else most
    if limit > most:
        raise OptionsError(f"max_codes={limit} exceeds this checkpoint's limit of {most} codes "
                           f"(its mel position table); lower max_codes or split the text")
    return limit


def _sampler(model: UnifiedVoice, options: SamplingOptions) -> CodeSampler:
    return CodeSampler(options, model.cfg.number_mel_codes,
                       (PROMPT_PLACEHOLDER_ID, model.cfg.start_mel_token), model.device)


@torch.no_grad()
def stream_codes(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds,
                 options: SamplingOptions = SamplingOptions(), *,
                 prompt: Optional[EncodedPrompt] = None, ignore_stop: bool = False) -> Iterator[int]:
    """Yields raw codes one by one as they are generated; the stop code, when it comes, is the
    last one yielded (`ignore_stop`: an ordinary code, and exactly `max_codes` codes come).
    cond_latents: [1, 32, D]; text_ids: [L] BPE ids of one segment.

    Pass `prompt` (from `encode_prompt` on the same inputs) to skip the prompt pass. Closing the
    iterator early (e.g. the client went away) simply stops the generation."""
    limit = max_codes_for(model, options)
    if prompt is None:
        prompt = encode_prompt(model, cond_latents, text_ids)
    cache = prompt.cache.copy(prompt.length + limit - 1)
    for _, code in _decode(model, cache, prompt.start_logits.unsqueeze(0), [_sampler(model, options)], [options],
                           ignore_stop):
        yield code


def generate_codes(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds,
                   options: SamplingOptions = SamplingOptions(), *,
                   prompt: Optional[EncodedPrompt] = None, ignore_stop: bool = False) -> GenerationResult:
    """Generates the codes of one segment. cond_latents: [1, 32, D]; text_ids: [L]."""
    raw = list(stream_codes(model, cond_latents, text_ids, options, prompt=prompt, ignore_stop=ignore_stop))
    return result_from_raw(model.cfg, raw, ignore_stop)


def generate_codes_batch(model: UnifiedVoice, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """Generates several segments (any voices, any options) in one batch, left-padded; each
    result equals what `generate_codes` gives for that request alone."""
    if not requests:
        return []
    options = [r.options for r in requests]
    limits = [max_codes_for(model, o) for o in options]
    samplers = [_sampler(model, o) for o in options]
    with torch.no_grad():
        cache, logits = _encode_prompts(model, requests, max(limits) - 1)
        raw: list[list[int]] = [[] for _ in requests]
        for row, code in _decode(model, cache, logits, samplers, options):
            raw[row].append(code)
    return [result_from_raw(model.cfg, r) for r in raw]


def result_from_raw(cfg: GPTConfig, raw: list[int], ignore_stop: bool = False) -> GenerationResult:
    """Raw codes as generated (by either engine) -> GenerationResult (silence shrunk, stop code
    noted). With `ignore_stop` the codes are kept as they came (the stop code is an ordinary code)."""
    codes_raw = torch.tensor(raw, dtype=torch.long)
    if ignore_stop:
        return GenerationResult(codes_raw, codes_raw.clone(), False)
    stop = cfg.stop_mel_token
    return GenerationResult(codes_raw, shrink_silence(codes_raw, stop), bool(raw) and raw[-1] == stop)


# -- post-processing ----------------------------------------------------------------------------

def shrink_silence(codes_raw: torch.Tensor, stop_code: int = 8193, silent_code: int = SILENT_CODE,
                   max_silent: int = MAX_SILENT_CODES) -> torch.Tensor:
    """One row of the original `remove_long_silence`: [T] -> [N].

    Cuts at the first stop code; if the silent code occurs more than `max_silent` times in the
    whole row (after the stop too), keeps only the first 10 codes of every run of it."""
    row = codes_raw.tolist()
    end = row.index(stop_code) if stop_code in row else len(row)
    if row.count(silent_code) <= max_silent:
        return codes_raw[:end].clone()
    keep, run = [], 0
    for k in range(end):
        if row[k] != silent_code:
            keep.append(k)
            run = 0
        elif run < KEEP_SILENT_RUN:
            keep.append(k)
            run += 1
    return codes_raw[keep]


class SilenceShrinker:
    """`shrink_silence` for codes that arrive one by one: releases each code, in order, as soon
    as no later code can change whether it is kept. The released codes, `finish()` included,
    are exactly `shrink_silence` of all codes pushed.

    Every code is final except from the first "excess" silent code (beyond the first
    `keep_run` of its run while the row's silent count is still <= `max_silent`) onward: those
    are held until the count exceeds `max_silent` (excess silent codes are then dropped, the
    rest released) or the row ends (`finish`: all held codes are kept). Codes after the stop
    code are never released but still count, as in the original. One object per segment.
    """

    def __init__(self, stop_code: int = 8193, silent_code: int = SILENT_CODE,
                 max_silent: int = MAX_SILENT_CODES, keep_run: int = KEEP_SILENT_RUN):
        self.stop_code, self.silent_code = stop_code, silent_code
        self.max_silent, self.keep_run = max_silent, keep_run
        self.silent = 0               # silent codes pushed so far, past the stop code too
        self.run = 0                  # silent codes just before the next code to decide, in its run
        self.held: list[int] = []     # undecided codes, from the first excess silent code on
        self.shrinking = False        # the count exceeded max_silent: the rule applies
        self.stopped = False          # the stop code came

    def push(self, raw_codes) -> list[int]:
        """raw_codes: [n] int, the next raw codes -> the codes that became final, in order."""
        out: list[int] = []
        for code in torch.as_tensor(raw_codes, dtype=torch.long).reshape(-1).tolist():
            self.silent += code == self.silent_code
            if not self.shrinking and self.silent > self.max_silent:
                self.shrinking = True          # decided: apply the rule to what was held
                held, self.held = self.held, []
                for c in held:
                    self._apply_rule(c, out)
            if self.stopped or code == self.stop_code:
                self.stopped = True            # the row is cut here; later codes only count
            elif self.shrinking:
                self._apply_rule(code, out)
            elif self.held or (code == self.silent_code and self.run >= self.keep_run):
                self.held.append(code)         # kept only if the count stays <= max_silent
            else:
                self.run = self.run + 1 if code == self.silent_code else 0
                out.append(code)
        return out

    def finish(self) -> list[int]:
        """The row ended: the codes still held, all kept (the count never exceeded max_silent)."""
        held, self.held = self.held, []
        return held

    def _apply_rule(self, code: int, out: list[int]) -> None:
        if code != self.silent_code:
            self.run = 0
            out.append(code)
        elif self.run < self.keep_run:
            self.run += 1
            out.append(code)


def remove_long_silence(codes: torch.Tensor, stop_code: int = 8193, silent_code: int = SILENT_CODE,
                        max_silent: int = MAX_SILENT_CODES) -> tuple[torch.Tensor, torch.Tensor]:
    """The original batch form: codes [B, T] -> (codes [B, N], lengths [B]).

    Rows are processed by `shrink_silence`. As in the original, when no row needed shrinking the
    rows keep their content past their length (only clipped to the longest length); otherwise
    they are re-padded with the stop code."""
    rows = [shrink_silence(r, stop_code, silent_code, max_silent) for r in codes]
    lengths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
    shrunk = any(int((r == silent_code).sum()) > max_silent for r in codes)
    if shrunk:
        out = codes.new_full((codes.size(0), int(lengths.max())), stop_code)
        for i, r in enumerate(rows):
            out[i, :r.numel()] = r
    else:
        out = codes[:, :int(lengths.max())]
    return out, lengths


# -- latents ----------------------------------------------------------------------------------

class LatentPass:
    """The teacher-forced latent pass, run chunk by chunk as codes arrive (one object per
    segment; not shared between threads).

    The latent of code j is the hidden state at the input before it (the start code for j = 0,
    else code j - 1 at mel position j), so a chunk's latents are ready as soon as its codes are.
    Feeding the codes of `compute_latents` in any chunking gives the same latents. Note that
    `shrink_silence` can only be decided once a segment is complete; stream raw codes here only
    where that shrinking is not wanted or cannot trigger (else stream what `SilenceShrinker`
    releases).
    """

    def __init__(self, model: UnifiedVoice, prompt: EncodedPrompt, max_codes: Optional[int] = None):
        most = model.cfg.mel_positions - 2        # the original pass also places 2 codes after them
        max_codes = most if max_codes is None else max_codes
        if max_codes > most:
            raise OptionsError(f"{max_codes} codes exceed the mel position table ({model.cfg.mel_positions} rows)")
        self.model = model
        self.max_codes = max_codes
        self.cache = prompt.cache.copy(prompt.length + max(max_codes - 1, 0))
        self.start_hidden = prompt.start_hidden
        self.codes: list[int] = []

    @torch.no_grad()
    def extend(self, codes) -> torch.Tensor:
        """codes: [n] int, the next codes of the segment (no stop code) -> their latents [n, D]."""
        new = torch.as_tensor(codes, dtype=torch.long).reshape(-1).tolist()
        before, total = len(self.codes), len(self.codes) + len(new)
        if total > self.max_codes:
            raise OptionsError(f"{total} codes exceed this latent pass's limit of {self.max_codes}")
        self.codes += new
        parts = [self.start_hidden.unsqueeze(0)] if before == 0 and new else []
        fed = max(before - 1, 0)                  # codes already run: c0 .. c(fed-1)
        if total - 1 > fed:
            inputs = torch.tensor(self.codes[fed:total - 1], device=self.model.device).unsqueeze(0)
            positions = torch.arange(fed + 1, total, device=self.model.device)
            parts.append(self.model(self.model.embed_mel(inputs, positions), self.cache)[0])
        if not parts:
            return torch.zeros(0, self.model.cfg.model_dim, dtype=self.model.dtype, device=self.model.device)
        return torch.cat(parts, dim=0)


def compute_latents(model: UnifiedVoice, cond_latents: torch.Tensor, text_ids: TextIds, codes,
                    *, prompt: Optional[EncodedPrompt] = None) -> torch.Tensor:
    """The vocoder's input: final-normed hidden states of the teacher-forced pass -> [N, D].

    Equals the original's second pass over `[8192] + codes + [8193]` (mel positions 0..N+1)
    truncated to its first N outputs. The pass is causal, so those outputs depend only on the
    prompt and `[8192, c0 .. c(N-2)]`: the prompt's cache is reused and only N - 1 codes run.
    cond_latents: [1, 32, D]; text_ids: [L]; codes: [N] int (after `shrink_silence`)."""
    codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
    if prompt is None:
        prompt = encode_prompt(model, cond_latents, text_ids)
    return LatentPass(model, prompt, max(codes.numel(), 1)).extend(codes)


def average_conditioning(latents: Sequence[torch.Tensor], weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """A voice from several references: the (weighted) mean of their conditioning latents.
    latents: each [1, 32, D]; weights: one per reference, >= 0, any positive sum -> [1, 32, D]."""
    if not latents:
        raise VoiceError("a voice needs at least one reference")
    shape = latents[0].shape
    if any(t.shape != shape for t in latents):
        raise VoiceError(f"conditioning latents differ in shape: {[tuple(t.shape) for t in latents]}")
    stacked = torch.stack(list(latents)).float()                 # [R, 1, 32, D]
    if weights is None:
        return stacked.mean(dim=0).to(latents[0].dtype)
    if len(weights) != len(latents) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise VoiceError(f"weights must be {len(latents)} non-negative numbers with a positive sum, "
                         f"got {list(weights)}")
    w = torch.tensor(weights, dtype=torch.float32, device=stacked.device)
    w = (w / w.sum()).view(-1, 1, 1, 1)
    return (stacked * w).sum(dim=0).to(latents[0].dtype)


def _check_cond(model: UnifiedVoice, cond_latents: torch.Tensor) -> None:
    want = (1, model.cfg.condition.num_latents, model.cfg.model_dim)
    if tuple(cond_latents.shape) != want:
        raise VoiceError(f"conditioning latents must be {list(want)}, got {list(cond_latents.shape)}; "
                         f"compute them with this checkpoint's get_conditioning")
