"""Running the compiled WeTextProcessing grammars with kaldifst: tag, reorder, verbalise.

This is WeTextProcessing's `Processor.normalize` (tagger, token reordering, verbaliser) on the
same transducers, with kaldifst's compose + single shortest path instead of pynini's. Identity
with pynini on every golden case and a fuzz corpus is checked by scripts/text_check_fst_identity.py.

Long inputs are cut into chunks at sentence ends before tagging. Composition time per character
grows with the input length (en: 0.4 ms/char at 50 chars, 0.8 ms/char at 2,000, 1.4 ms/char at
20,000; digit runs ten times that), so whole-text tagging, which the original does, is
superlinear; chunks of bounded size make it linear. Cuts are placed only where no grammar rule
spans (sentence enders and line breaks, checked against the golden cases with chunking forced at
every sentence), and only for texts longer than `chunk_chars`.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Optional

from indextts.text.grammars import GrammarError, GrammarSet

logger = logging.getLogger(__name__)

# WeTextProcessing's field orders (tn/token_parser.py): the verbaliser expects these fields in
# this order; fields not listed are dropped, unless the token says preserve_order: "true".
_ZH_ORDERS = {
    "date": ("year", "month", "day"),
    "fraction": ("denominator", "numerator"),
    "measure": ("denominator", "numerator", "value"),
    "money": ("value", "currency"),
    "time": ("noon", "hour", "minute", "second"),
}
_EN_ORDERS = {
    "date": ("preserve_order", "text", "day", "month", "year"),
    "money": ("integer_part", "fractional_part", "quantity", "currency_maj"),
}
_ORDERS = {"zh": _ZH_ORDERS, "en": _EN_ORDERS}

_TOKEN = re.compile(r' *+([A-Za-z_]*+) *+\{((?: *+[A-Za-z_]++: *+"(?:[^"\\]|\\.)*+")*+) *+\}', re.DOTALL)
_FIELD = re.compile(r' *+([A-Za-z_]++): *+"((?:[^"\\]|\\.)*+)"', re.DOTALL)


def reorder_tokens(tagged: str, orders: dict[str, tuple[str, ...]]) -> Optional[tuple[str, str]]:
    """Tagger output -> (verbaliser input, name of the last token).

    Tokens are `name { key: "value" ... }`; fields are put in the verbaliser's order. Returns None
    if `tagged` is not a sequence of tokens (never seen from a real tagger).
    """
    out = []
    pos = 0
    for match in _TOKEN.finditer(tagged):
        if match.start() != pos:
            return None
        pos = match.end()
        name = match.group(1)
        keys: list[str] = []
        values: dict[str, str] = {}
        for field in _FIELD.finditer(match.group(2)):
            keys.append(field.group(1))
            values[field.group(1)] = field.group(2)
        if name in orders and values.get("preserve_order") != "true":
            keys = list(orders[name])
        body = "".join(f' {k}: "{values[k]}"' for k in keys if k in values)
        out.append(f"{name} {{{body} }}")
    if tagged[pos:].strip(" ") or not out:
        return None
    return " ".join(out), name


# Where long texts may be cut, finest last; a chunk ends at group 1's start and the next begins at
# its end (zh: group 1 is empty, so zh chunks concatenate back to the text). zh output keeps every
# character. en output drops whitespace, except spaces right after a punctuation token (which
# joins them), and puts one space after any other token; `WeTextNormalizer` re-creates that.
_ZH_RULES = (
    re.compile(r"[。！？!?；;…\n]++[”’」』》）)\]'\"]*+()"),
    re.compile(r"(?:[，、：]++|[,:](?![0-9]))()"),
    re.compile(r"\s++()"),
)
_EN_RULES = (
    re.compile(r"[.!?…;]++[\"')\]”’]*+([ \t\n\r]++)(?=[A-Za-z0-9])"),
    re.compile(r"[,:]++([ \t\n\r]++)(?=[A-Za-z])"),
    re.compile(r"(?<=[A-Za-z])([ \t\n\r]++)(?=[A-Za-z])"),
)
_ABBREVIATION = re.compile(r"(?:[A-Z][A-Za-z]{0,2}|\.[a-z])\.$")
_WORDISH = re.compile(r"[A-Za-z0-9_<>]")


@dataclass(frozen=True)
class Chunk:
    text: str
    gap: str = ""   # the whitespace between this chunk and the next, left out of both (en only)


def _cuts(text: str, start: int, end: int, rule: re.Pattern, lang: str) -> list[tuple[int, int]]:
    found = []
    for m in rule.finditer(text, start, end):
        left, right = m.span(1)
        if right >= end or left <= start:
            continue
        if lang == "en" and _ABBREVIATION.search(text[max(start, left - 8):left]):
            continue                 # "Mr. Smith": the grammar reads "Mr." with what follows
        found.append((left, right))
    return found


def _hard_cut(text: str, start: int, limit: int) -> int:
    """A cut at most `limit` chars after `start`, moved back out of a word/number/placeholder run."""
    end = start + limit
    for cut in range(end, max(start + limit // 2, start + 1), -1):
        if not (_WORDISH.match(text, cut - 1) and _WORDISH.match(text, cut)):
            return cut
    return end


def split_into_chunks(text: str, lang: str, chunk_chars: int) -> list[Chunk]:
    """Cut `text` into chunks of at most `chunk_chars` chars, preferring sentence ends.

    Texts up to `chunk_chars` stay whole. For zh, the chunks concatenate back to `text`.
    """
    if len(text) <= chunk_chars:
        return [Chunk(text, "")]
    out: list[Chunk] = []
    _pack(text, 0, len(text), _ZH_RULES if lang == "zh" else _EN_RULES, lang, chunk_chars, "", out)
    return out


def _pack(text: str, start: int, end: int, rules: tuple, lang: str, limit: int, gap: str,
          out: list[Chunk]) -> None:
    """Greedily pack text[start:end] into chunks <= limit chars: cuts of rules[0], then finer rules."""
    if end - start <= limit:
        out.append(Chunk(text[start:end], gap))
        return
    if not rules:  # no cut anywhere: by length (only for pathological input, e.g. one 5k-digit number)
        while end - start > limit:
            cut = _hard_cut(text, start, limit)
            out.append(Chunk(text[start:cut]))
            start = cut
        out.append(Chunk(text[start:end], gap))
        return
    cuts = _cuts(text, start, end, rules[0], lang) + [(end, end)]
    piece_start = start
    last_fit = None                      # the last cut that keeps the current chunk within limit
    for cut in cuts:
        if cut[0] - piece_start <= limit:
            last_fit = cut
            continue
        if last_fit is not None:         # close the chunk at the last cut that fitted
            out.append(Chunk(text[piece_start:last_fit[0]], text[last_fit[0]:last_fit[1]]))
            piece_start = last_fit[1]
            last_fit = None
        if cut[0] - piece_start <= limit:
            last_fit = cut
        else:                            # one sentence alone is too long: finer cuts inside it
            _pack(text, piece_start, cut[0], rules[1:], lang, limit, text[cut[0]:cut[1]], out)
            piece_start = cut[1]
    if last_fit is not None:
        out.append(Chunk(text[piece_start:last_fit[0]], gap if last_fit[0] == end else
                         text[last_fit[0]:last_fit[1]]))


_LOAD_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}


def _load_fst(path) -> object:
    """One immutable kaldifst rule per file per process (read-only, shared by all threads)."""
    key = str(path)
    with _LOAD_LOCK:
        rule = _LOADED.get(key)
        if rule is None:
            try:
                import kaldifst
            except ImportError as e:
                raise GrammarError("the text normaliser needs kaldifst: pip install kaldifst==1.8.3") from e
            try:
                rule = kaldifst.TextNormalizer(key)
            except Exception as e:  # kaldifst raises RuntimeError subclasses on unreadable files
                raise GrammarError(f"cannot read grammar {key} ({e}); delete its directory to rebuild") from e
            _LOADED[key] = rule
        return rule


@dataclass(frozen=True)
class WeTextOptions:
    """`chunk_chars`: texts longer than this are tagged chunk by chunk (None: whole, as the original)."""

    chunk_chars: Optional[int] = 200


class WeTextNormalizer:
    """WeTextProcessing's `normalize` for one language ("zh" or "en") on kaldifst.

    `normalize` returns None where WeTextProcessing raises (no path through a grammar), so the
    caller can apply the original's fallback. Thread-safe: the rules are never mutated.
    """

    def __init__(self, grammars: GrammarSet, lang: str, options: WeTextOptions = WeTextOptions()):
        if lang not in _ORDERS:
            raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
        self.lang = lang
        self.options = options
        self._tagger = _load_fst(grammars.path(lang, "tagger"))
        self._verbalizer = _load_fst(grammars.path(lang, "verbalizer"))
        self._orders = _ORDERS[lang]

    def normalize(self, text: str) -> Optional[str]:
        if self.options.chunk_chars is None:
            result = self._normalize_one(text)
            return None if result is None else result[0]
        parts: list[str] = []
        joiner = ""
        for chunk in split_into_chunks(text, self.lang, self.options.chunk_chars):
            result = self._normalize_one(chunk.text)
            if result is None:
                return None
            output, last_token = result
            if output:
                parts += [joiner, output]
                joiner = self._joiner(chunk.gap, last_token)
        return "".join(parts)

    def _joiner(self, gap: str, last_token: str) -> str:
        if self.lang == "zh":
            return ""
        if last_token == "p":   # a punctuation token keeps the spaces that follow it
            return gap[:len(gap) - len(gap.lstrip(" "))]
        return " "

    def _normalize_one(self, text: str) -> Optional[tuple[str, str]]:
        """(output, name of the last token), or None where WeTextProcessing would raise."""
        if not text:
            return "", ""
        tagged = self._tagger.normalize(text)
        if not tagged:
            # An accepted input is tagged to at least one token unless it is only spaces or NULs
            # (OpenFst's epsilon); otherwise there was no path, where pynini would have raised.
            return ("", "") if not text.strip(" \x00") else None
        reordered = reorder_tokens(tagged, self._orders)
        if reordered is None:
            logger.warning("unexpected %s tagger output %r", self.lang, tagged[:200])
            return None
        verbalized = self._verbalizer.normalize(reordered[0])
        return (verbalized, reordered[1]) if verbalized else None
