"""Running the compiled WeTextProcessing grammars with kaldifst: tag, reorder, verbalise.

This is WeTextProcessing's `Processor.normalize` (tagger, token reordering, verbaliser) on the
same transducers, with kaldifst's compose + single shortest path instead of pynini's. Identity
with pynini on every golden case and a fuzz corpus is checked by scripts/text_check_fst_identity.py.

Long texts are tagged chunk by chunk: whole sentences packed into passes of up to PASS_CHARS, and
a sentence longer than `chunk_chars` (CHUNK_CHARS) cut at commas, then spaces, then by length.
Three reasons:
- Time. Composition cost per character grows with the input (en: 0.4 ms/char at 50 chars,
  0.8 at 2,000, 1.4 at 20,000; digit runs are quadratic), so the original's whole-text pass is
  superlinear. Bounded chunks make it linear.
- Fidelity of the result, oddly: path costs are float32 sums, and over a few hundred characters
  they lose the precision that separates close rules; the whole-text pass then reads
  `1,234,567` as "one two three fourfive six seven" where the sentence alone gives "one million
  two hundred ...". The chunks avoid that.
- Fairness: a pass holds the GIL, so a short request waits at most one short pass.
A text of golden cases gives exactly their golden outputs joined (tests/test_text.py), where the
whole-text pass shows the float32 effect. zh output keeps every character, so zh chunks simply
concatenate; en output drops whitespace except spaces after punctuation, which the joiners
reproduce.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from dataclasses import dataclass
from typing import Optional

from indextts.scheduling import current_turn
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

_KEY = re.compile(r"[A-Za-z_]*")
_VALUE = re.compile(r'[^"\\]*(?:\\[\s\S][^"\\]*)*')   # up to an unescaped quote; a backslash takes the next char
_SPACES = re.compile(r" *")

Token = tuple[str, list[str], dict[str, str]]   # name, keys in order (repeats kept), last value per key


# Characters per normalisation pass over a long text: whole sentences are packed into passes of
# up to PASS_CHARS (a short pass holds the GIL briefly, so another request gets in sooner), and only
# a sentence longer than CHUNK_CHARS is cut inside (at commas, then spaces), where output can change.
CHUNK_CHARS = 200
PASS_CHARS = 80


def parse_tokens(tagged: str) -> Optional[list[Token]]:
    """Tagger output as WeTextProcessing's TokenParser reads it, in linear time.

    Its layout is `name { key: "value" ... } ...`, but the en grammar can emit an unescaped `"`
    inside a value (its `<...>` emphasis rule), and TokenParser then reads on in a shifted frame;
    so do we. Where TokenParser asserts we return None (it raised), and also where it loops
    forever (a value that runs to the end of the text).
    """
    n = len(tagged)
    i = 0
    tokens: list[Token] = []

    def skip(chars: str) -> None:     # each of `chars`, in turn, if it is next
        nonlocal i
        for c in chars:
            if i < n and tagged[i] == c:
                i += 1

    def key() -> Optional[str]:
        nonlocal i
        if i >= n or tagged[i] in string.whitespace:
            return None
        end = _KEY.match(tagged, i).end()
        name, i = tagged[i:end], end
        return name

    while True:
        i = _SPACES.match(tagged, i).end()
        if i >= n:
            return tokens
        name = key()
        if name is None:
            return None
        skip(" { ")
        keys: list[str] = []
        values: dict[str, str] = {}
        while True:
            i = _SPACES.match(tagged, i).end()
            if i >= n:
                break
            if tagged[i] == "}":
                i += 1
                break
            field = key()
            if field is None:
                return None
            skip(': "')
            end = _VALUE.match(tagged, i).end()
            if end >= n or tagged[end] != '"':   # unterminated, or a backslash last: TokenParser never returns
                return None
            keys.append(field)
            values[field] = tagged[i:end]
            i = end
            skip('"')
        tokens.append((name, keys, values))


def reorder_tokens(tagged: str, orders: dict[str, tuple[str, ...]]) -> Optional[tuple[str, str]]:
    """Tagger output -> (verbaliser input, name of the last token).

    Tokens are `name { key: "value" ... }`; fields are put in the verbaliser's order, and fields
    that order does not list are dropped, unless the token says preserve_order: "true". None
    where WeTextProcessing's parser would fail.
    """
    tokens = parse_tokens(tagged)
    if not tokens:
        return None
    out = []
    for name, keys, values in tokens:
        if name in orders and values.get("preserve_order") != "true":
            keys = list(orders[name])
        body = "".join(f' {k}: "{values[k]}"' for k in keys if k in values)
        out.append(f"{name} {{{body} }}")
    return " ".join(out).strip(), tokens[-1][0]


# Where long texts may be cut, finest last; a chunk ends at group 1's start and the next begins at
# its end (zh: group 1 is empty, so zh chunks concatenate back to the text). zh output keeps every
# character. en output drops whitespace, except spaces right after a punctuation token (which
# joins them), and puts one space after any other token; `WeTextNormalizer` re-creates that.
_ZH_RULES = (
    re.compile(r"[。！？!?；;…\n]+[”’」』》）)\]'\"]*()"),
    re.compile(r"(?:[，、：]+|[,:](?![0-9]))()"),
    re.compile(r"\s+()"),
)
# Each en pattern is anchored at the start of its run (lookbehind), so that a failed attempt is
# not retried at every later character of the run: linear time on runs of punctuation or spaces.
_EN_RULES = (
    re.compile(r"(?<![.!?…;])[.!?…;]+[\"')\]”’]*([ \t\n\r]+)(?=[A-Za-z0-9])"),
    re.compile(r"(?<![,:])[,:]+([ \t\n\r]+)(?=[A-Za-z])"),
    re.compile(r"(?<=[A-Za-z])([ \t\n\r]+)(?=[A-Za-z])"),
)
_ABBREVIATION = re.compile(r"(?:[A-Z][A-Za-z]{0,2}|\.[a-z])\.$")
HARD_CUT_CHARS = 64
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


def split_into_chunks(text: str, lang: str, chunk_chars: int, pass_chars: int = PASS_CHARS) -> list[Chunk]:
    """Cut `text` into chunks of at most `chunk_chars` chars, preferring sentence ends.

    Whole sentences are packed into chunks of up to `pass_chars`; a sentence between the two
    stays one chunk, and only a longer one is cut inside. Texts up to `pass_chars` stay whole.
    For zh, the chunks concatenate back to `text`.
    """
    pack = min(pass_chars, chunk_chars)
    if len(text) <= pack:
        return [Chunk(text, "")]
    out: list[Chunk] = []
    _pack(text, 0, len(text), _ZH_RULES if lang == "zh" else _EN_RULES, lang, chunk_chars, "", out, pack)
    return out


def _pack(text: str, start: int, end: int, rules: tuple, lang: str, limit: int, gap: str,
          out: list[Chunk], pack: Optional[int] = None) -> None:
    """Greedily pack text[start:end] into chunks of at most `pack` chars (default `limit`) at the
    cuts of rules[0]; a piece between two cuts that exceeds `limit` is cut by the finer rules."""
    pack = pack or limit
    if end - start <= pack:
        out.append(Chunk(text[start:end], gap))
        return
    if not rules:  # no cut anywhere: by length (pathological input, e.g. a 5k-digit number)
        limit = min(limit, HARD_CUT_CHARS)   # tagging a digit run costs time quadratic in its length
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
        if cut[0] - piece_start <= pack:
            last_fit = cut
            continue
        if last_fit is not None:         # close the chunk at the last cut that fitted
            out.append(Chunk(text[piece_start:last_fit[0]], text[last_fit[0]:last_fit[1]]))
            piece_start = last_fit[1]
            last_fit = None
        if cut[0] - piece_start <= pack:
            last_fit = cut
        elif cut[0] - piece_start <= limit:   # one piece over `pack` but within `limit`: a chunk of its own
            out.append(Chunk(text[piece_start:cut[0]], gap if cut[0] == end else text[cut[0]:cut[1]]))
            piece_start = cut[1]
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

    chunk_chars: Optional[int] = CHUNK_CHARS


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
        turn, left = current_turn(), len(text)
        for chunk in split_into_chunks(text, self.lang, self.options.chunk_chars):
            turn.pause(left)              # more urgent work (another request's) may go first
            left -= len(chunk.text)
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
        current_turn().pause()            # between the two transducer passes, each holding the GIL
        verbalized = self._verbalizer.normalize(reordered[0])
        return (verbalized, reordered[1]) if verbalized else None
