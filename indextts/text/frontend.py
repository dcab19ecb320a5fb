"""The text frontend: raw text -> normalised text -> BPE pieces and ids -> segments.

    frontend = TextFrontend.from_model_dir("checkpoints/IndexTTS-1.5")
    result = frontend.process("你好，world!", max_tokens=120)   # FrontendResult

Every method is thread-safe: the grammars, the SentencePiece model and the options are read-only.
The grammar transducers hold the GIL while they run (about 0.1-1 ms per character), so a server
should call the frontend off its event loop.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from indextts.errors import NothingToSpeakError, OptionsError, TextError
from indextts.text.grammars import GrammarSet, ensure_grammars
from indextts.text.normalizer import NormalizerBackends, TextNormalizer
from indextts.text.segmenter import split_pieces, warn_hard_splits
from indextts.text.tokenizer import BpeTokenizer, space_cjk_and_upper
from indextts.text.wetext import CHUNK_CHARS, WeTextNormalizer, WeTextOptions
from indextts.types import FrontendResult, Segment

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 120   # the original's max_text_tokens_per_sentence


@dataclass(frozen=True)
class FrontendOptions:
    """Validated once.

    max_chars: longer inputs are refused (TextError); None for no limit.
    max_tokens: default segment limit in BPE tokens (the original's 120).
    fix_duplicated_quote: attach a quote that follows a sentence end once, instead of the
        original's twice (off by default for parity with the original).
    chunk_chars: long texts are normalised in passes of whole sentences (wetext.PASS_CHARS), and
        only a sentence longer than this is cut inside: time linear in length, none of the
        float32 cost drift that the original's whole-text pass shows on long texts, and short
        GIL-holding passes (wetext.py). None: the whole text at once, as the original.
    """

    max_chars: Optional[int] = 4096
    max_tokens: int = DEFAULT_MAX_TOKENS
    fix_duplicated_quote: bool = False
    chunk_chars: Optional[int] = CHUNK_CHARS

    def __post_init__(self):
        for name in ("max_chars", "chunk_chars"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise OptionsError(f"{name} must be a positive integer or None, got {value!r}")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise OptionsError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")


def _drop_surrogates(text: str) -> str:
    """Lone surrogates (possible in JSON strings) cannot be UTF-8 encoded; the original crashed on them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)


def check_speakable(result: FrontendResult) -> FrontendResult:
    """`result` if its normalised text has a letter or digit (Unicode categories L*, N*), else
    `NothingToSpeakError`: text of only punctuation, symbols, emoji, control or format characters
    would be synthesised as noise (the original does), so a service refuses it."""
    if not any(unicodedata.category(c)[0] in "LN" for c in result.normalized):
        raise NothingToSpeakError("the text has nothing to speak: no letters or digits are left after "
                                  "normalisation (only punctuation, symbols, emoji or control characters)")
    return result


class TextFrontend:
    """Normaliser + tokenizer + segmenter of one checkpoint."""

    def __init__(self, bpe_path: str | Path, *, cache_dir: str | os.PathLike | None = None,
                 grammars: Optional[GrammarSet] = None, options: FrontendOptions = FrontendOptions()):
        """`grammars` defaults to the cache under `cache_dir` (built on first use; see grammars.py)."""
        self.options = options
        self.tokenizer = BpeTokenizer(bpe_path)
        self.grammars = grammars or ensure_grammars(cache_dir)
        wetext_options = WeTextOptions(chunk_chars=options.chunk_chars)
        self.normalizer = TextNormalizer(NormalizerBackends(
            zh=WeTextNormalizer(self.grammars, "zh", wetext_options),
            en=WeTextNormalizer(self.grammars, "en", wetext_options)))

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, cache_dir: str | os.PathLike | None = None,
                       options: FrontendOptions = FrontendOptions()) -> "TextFrontend":
        """The frontend of a checkpoint directory (or hub id): its config's `bpe_model`."""
        from indextts.checkpoint import CheckpointInfo

        info = CheckpointInfo.from_dir(model_dir, require_weights=False)
        return cls(info.bpe_path, cache_dir=cache_dir, options=options)

    # -- steps ---------------------------------------------------------------------------------

    def _validated(self, text: str) -> str:
        if not isinstance(text, str):
            raise TextError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise TextError("text is empty or only whitespace; pass the words to speak")
        text = _drop_surrogates(text)
        if not text.strip():
            raise NothingToSpeakError("the text has nothing to speak: it holds only unpaired surrogates")
        limit = self.options.max_chars
        if limit is not None and len(text) > limit:
            raise TextError(f"text has {len(text)} characters, over the limit of {limit}; split it into "
                            f"several requests or raise FrontendOptions.max_chars")
        return text

    def normalize(self, text: str) -> str:
        """The original's normalised text (before CJK spacing and upper-casing)."""
        return self.normalizer.normalize(self._validated(text))

    def tokenize(self, text: str) -> tuple[list[str], list[int]]:
        """(pieces, ids) of raw text, normalised as the original does."""
        _, pieces = self._normalize_and_encode(self._validated(text))
        return pieces, self.tokenizer.piece_ids(pieces)

    def segment(self, pieces: Sequence[str], max_tokens: Optional[int] = None) -> list[Segment]:
        """Segments of `pieces` of at most `max_tokens` (default options.max_tokens) tokens each.

        Emits `HardSplitWarning` when a segment had to be cut by length, as the original does.
        """
        return self._segment(pieces, max_tokens)

    def _max_tokens(self, max_tokens: Optional[int]) -> int:
        max_tokens = self.options.max_tokens if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise OptionsError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        return max_tokens

    def _segment(self, pieces: Sequence[str], max_tokens: Optional[int]) -> list[Segment]:
        max_tokens = self._max_tokens(max_tokens)
        result = split_pieces(pieces, max_tokens, fix_duplicated_quote=self.options.fix_duplicated_quote)
        warn_hard_splits(result, max_tokens, stacklevel=4)   # points at our caller's caller
        return [Segment(ids=tuple(self.tokenizer.piece_ids(seg)),
                        text="".join(seg).replace("▁", " ").strip()) for seg in result.segments]

    def process(self, text: str, max_tokens: Optional[int] = None) -> FrontendResult:
        """All steps. Raises TextError for empty, too long, or nothing-left-after-normalising text."""
        max_tokens = self._max_tokens(max_tokens)
        normalized, pieces = self._normalize_and_encode(self._validated(text))
        return FrontendResult(normalized=normalized, pieces=tuple(pieces),
                              ids=tuple(self.tokenizer.piece_ids(pieces)),
                              segments=tuple(self._segment(pieces, max_tokens)))

    def _normalize_and_encode(self, text: str) -> tuple[str, list[str]]:
        normalized = self.normalizer.normalize(text)
        if self.tokenizer.bypasses_normalizer(text):
            # The original encodes a one-character text raw (unstripped, not upper-cased).
            pieces = self.tokenizer.encode_pieces(text)
        else:
            if not normalized.strip():
                raise NothingToSpeakError("the text has nothing to speak: nothing is left of it after "
                                          "normalisation")
            pieces = self.tokenizer.encode_pieces(space_cjk_and_upper(normalized))
        if not pieces:
            raise NothingToSpeakError("the text has nothing to speak: it produces no tokens")
        return normalized, pieces
