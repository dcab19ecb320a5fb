"""Text normalisation as IndexTTS 1.0/1.5 does it (reference: index-tts f017ab2, TextNormalizer).

Pipeline: `嗯`->`恩`, `呣`->`母`; pick zh or en; expand English `'s` contractions; (zh) hide pinyin
with tone numbers and `·` names behind placeholders; WeTextProcessing; restore the hidden parts;
map punctuation. Quirks of the original that the golden cases pin are kept (tests/golden/README.md).

Three deliberate differences, each where the original is nondeterministic, corrupts text or fails:
- Protected spans are replaced longest first. The original's order is a `set`'s, which changes
  with PYTHONHASHSEED, and a short syllable replaced first (`an4`) breaks a longer one (`xian4`).
- Past 26 protected spans the original's placeholder letters run into punctuation, controls and
  Latin-1 (`chr(ord("a") + i)`), which the grammars rewrite; we continue with `ba`, `bb`, ...
- The en grammar has no path for text that starts with a tab, newline or no-break space; the
  original then skips English normalisation altogether ("\n3 apples" stays "3 apples"). Where it
  fails so, we retry without that leading whitespace. Texts it accepts are not touched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Protocol

logger = logging.getLogger(__name__)

# The original's character map, in its order (the alternation is tried left to right).
PUNCTUATION_MAP: dict[str, str] = {
    "：": ",", "；": ",", ";": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": " ",
    "·": "-", "、": ",", "...": "…", ",,,": "…", "，，，": "…", "……": "…",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'",
    "—": "-", "～": "-", "~": "-", "「": "'", "」": "'", ":": ",",
}
ZH_PUNCTUATION_MAP: dict[str, str] = {"$": ".", **PUNCTUATION_MAP}
SPECIAL_REPLACEMENTS = (("嗯", "恩"), ("呣", "母"))

PINYIN_TONE = re.compile(
    r"(?<![a-z])((?:[bpmfdtnlgkhjqxzcsryw]|[zcs]h)?(?:[aeiouüv]|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e|"
    r"[uvü]ang?|uai|[aeiuv]n|[aeio]ng|ia[no]|i[ao]ng)|ng|er)([1-5])", re.IGNORECASE)
# Chinese names joined by `·`, `-` or `—`. The original's pattern is tried at every hanzi of a
# run and backtracks over the rest of it: quadratic in the run's length. A match can only start
# where a run starts, so anchoring there finds the same names in linear time.
NAME = re.compile(r"(?<![\u4e00-\u9fff])[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}")
CONTRACTION = re.compile(r"(what|where|who|which|how|t?here|it|s?he|that|this)'s", re.IGNORECASE)
EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")
_HANZI = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[a-zA-Z]")
_JQX_U = re.compile(r"([jqx])[uü](n|e|an)*(\d)", re.IGNORECASE)
_EN_GRAMMAR_SPACE = " \t\n\r\x0b\x0c\xa0"   # what the en grammar treats as space


def _alternation(mapping: dict[str, str]) -> re.Pattern:
    return re.compile("|".join(re.escape(k) for k in mapping))


_PUNCT_RE = _alternation(PUNCTUATION_MAP)
_ZH_PUNCT_RE = _alternation(ZH_PUNCTUATION_MAP)


class Backend(Protocol):
    """One language's WeTextProcessing normaliser; None where it finds no path (it raised)."""

    def normalize(self, text: str) -> Optional[str]: ...


def use_chinese(text: str) -> bool:
    """The original's routing: zh for any hanzi, no Latin letter, a bare email, or tone pinyin."""
    if _HANZI.search(text) or not _LATIN.search(text) or EMAIL.match(text):
        return True
    return PINYIN_TONE.search(text) is not None


def correct_pinyin(pinyin: str) -> str:
    """j/q/x + u/ü finals -> v, upper-cased (`xuan4` -> `XVAN4`); other syllables unchanged."""
    if pinyin[0] not in "jqxJQX":
        return pinyin
    return _JQX_U.sub(r"\g<1>v\g<2>\g<3>", pinyin).upper()


def _placeholder_code(i: int) -> str:
    """a..z as in the original, then two or more letters (ba, bb, ...), never colliding."""
    if i < 26:
        return chr(ord("a") + i)
    digits = []
    while i:
        i, r = divmod(i, 26)
        digits.append(chr(ord("a") + r))
    return "".join(reversed(digits))


def _protect(text: str, found: list[str], prefix: str) -> tuple[str, list[tuple[str, str]]]:
    unique = sorted(dict.fromkeys(found), key=len, reverse=True)
    pairs = [(f"<{prefix}_{_placeholder_code(i)}>", original) for i, original in enumerate(unique)]
    for placeholder, original in pairs:
        text = text.replace(original, placeholder)
    return text, pairs


@dataclass(frozen=True)
class NormalizerBackends:
    zh: Backend
    en: Backend


class TextNormalizer:
    """The original's `TextNormalizer.normalize`, over injected WeTextProcessing backends."""

    def __init__(self, backends: NormalizerBackends):
        self._zh = backends.zh
        self._en = backends.en

    def normalize(self, text: str) -> str:
        for old, new in SPECIAL_REPLACEMENTS:
            text = text.replace(old, new)
        if use_chinese(text):
            return self._normalize_zh(text)
        return self._normalize_en(text)

    def _normalize_zh(self, text: str) -> str:
        text = CONTRACTION.sub(r"\1 is", text)
        text = text.rstrip()
        text, pinyins = _protect(text, [m.group(0) for m in PINYIN_TONE.finditer(text)], "pinyin")
        text, names = _protect(text, NAME.findall(text), "n")
        result = self._zh.normalize(text)
        if result is None:  # the original logs the traceback and goes on with nothing
            logger.warning("zh normaliser found no path through %r; text dropped, as the original does",
                           text[:80])
            result = ""
        for placeholder, name in names:
            result = result.replace(placeholder, name)
        for placeholder, pinyin in pinyins:
            result = result.replace(placeholder, correct_pinyin(pinyin))
        return _ZH_PUNCT_RE.sub(lambda m: ZH_PUNCTUATION_MAP[m.group(0)], result)

    def _normalize_en(self, text: str) -> str:
        text = CONTRACTION.sub(r"\1 is", text)
        result = self._en.normalize(text)
        if result is None and text[:1] in _EN_GRAMMAR_SPACE:
            result = self._en.normalize(text.lstrip(_EN_GRAMMAR_SPACE))
        if result is None:  # the original keeps the text as it is
            logger.warning("en normaliser found no path through %r; text kept unnormalised", text[:80])
            result = text
        return _PUNCT_RE.sub(lambda m: PUNCTUATION_MAP[m.group(0)], result)
