"""Cutting a token sequence into segments the GPT synthesises one at a time.

The original's `split_sentences` rules (f017ab2): end a sentence after a sentence-ending piece
(once it has more than two tokens); a sentence that reaches the limit is re-split on commas, then
on `-`, then by hard length (a `RuntimeWarning`; this can cut inside a word); then neighbours are
merged greedily while the sum stays within the limit.

Quirks kept by default, as the golden cases pin them:
- A quote piece right after a sentence end is appended to that sentence and then *also* starts
  the next one (a dead `i += 1`). So a segment can hold `max_tokens + 1` pieces, and the quote is
  spoken twice. `fix_duplicated_quote=True` attaches it once (and only if it fits).
- The quote appended that way does not count towards the sentence's length.
Where the original recurses forever (a chunk that neither commas nor dashes can split and that
holds both), we cut by length instead of raising RecursionError.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

SENTENCE_ENDS = frozenset({".", "!", "?", "▁.", "▁?", "▁..."})   # the original's list ("▁!" was <unk>)
COMMAS = frozenset({",", "▁,"})
DASHES = frozenset({"-"})
QUOTES = frozenset({"'", "▁'"})
_ORDER = (SENTENCE_ENDS, COMMAS, DASHES)


class HardSplitWarning(RuntimeWarning):
    """A segment had to be cut by length (no sentence end, comma or dash to cut at)."""


@dataclass
class SplitResult:
    segments: list[list[str]]
    hard_splits: int = 0


def split_pieces(pieces: Sequence[str], max_tokens: int = 120, *,
                 fix_duplicated_quote: bool = False) -> SplitResult:
    """Segments of `pieces`, each at most `max_tokens` long (+1 for the duplicated-quote quirk)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    result = SplitResult([])
    result.segments = _split(list(pieces), SENTENCE_ENDS, max_tokens, fix_duplicated_quote, result)
    return result


def _split(tokens: list[str], ends: frozenset, max_tokens: int, fix_quote: bool,
           result: SplitResult) -> list[list[str]]:
    if not tokens:
        return []
    sentences: list[list[str]] = []
    current: list[str] = []
    count = 0   # the original's length counter: ignores the quote appended after a sentence end
    i = 0
    while i < len(tokens):
        token = tokens[i]
        current.append(token)
        count += 1
        if count <= max_tokens:
            if token in ends and count > 2:
                if i + 1 < len(tokens) and tokens[i + 1] in QUOTES:
                    if not fix_quote:
                        current.append(tokens[i + 1])   # and it is seen again as the next token
                    elif count < max_tokens:
                        current.append(tokens[i + 1])
                        i += 1
                sentences.append(current)
                current, count = [], 0
            i += 1
            continue
        sentences.extend(_resplit(current, ends, max_tokens, fix_quote, result))
        current, count = [], 0
        i += 1
    if count > 0:
        sentences.append(current)
    return _merge(sentences, max_tokens)


def _resplit(chunk: list[str], ends: frozenset, max_tokens: int, fix_quote: bool,
             result: SplitResult) -> list[list[str]]:
    """An over-long chunk: commas if not tried yet, else dashes if not tried yet, else length."""
    if ends is not COMMAS and any(t in COMMAS for t in chunk) and ends is SENTENCE_ENDS:
        return _split(chunk, COMMAS, max_tokens, fix_quote, result)
    if ends is not DASHES and "-" in chunk:
        return _split(chunk, DASHES, max_tokens, fix_quote, result)
    # The original, splitting on dashes, would go back to commas here and never return.
    result.hard_splits += 1
    return [chunk[j:j + max_tokens] for j in range(0, len(chunk), max_tokens)]


def _merge(sentences: list[list[str]], max_tokens: int) -> list[list[str]]:
    merged: list[list[str]] = []
    for sentence in sentences:
        if not sentence:
            continue
        if merged and len(merged[-1]) + len(sentence) <= max_tokens:
            merged[-1] = merged[-1] + sentence
        else:
            merged.append(sentence)
    return merged


def warn_hard_splits(result: SplitResult, max_tokens: int, stacklevel: int = 2) -> None:
    """The original's warning, once per call rather than once per cut."""
    if result.hard_splits:
        warnings.warn(f"{result.hard_splits} segment(s) exceeded {max_tokens} tokens with no sentence "
                      "end, comma or dash to cut at and were cut by length (possibly inside a word)",
                      HardSplitWarning, stacklevel=stacklevel + 1)
