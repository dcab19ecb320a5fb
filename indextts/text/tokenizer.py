"""SentencePiece tokenisation of normalised text, as the original `TextTokenizer` does it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from indextts.errors import ModelDirError

# CJK ranges of the original's tokenize_by_CJK_char (from NLTK's tokenizer utilities).
_CJK = re.compile(r"([\u1100-\u11ff\u2e80-\ua4cf\ua840-\uD7AF\uF900-\uFAFF\uFE30-\uFE4F"
                  r"\uFF65-\uFFDC\U00020000-\U0002FFFF])")

BOS_ID = 0   # <s>, the GPT's start-of-text token
EOS_ID = 1   # </s>, its stop-of-text token


def space_cjk_and_upper(text: str) -> str:
    """`你好世界 hello` -> `你 好 世 界 HELLO`: a space around every CJK character, all upper-case."""
    return " ".join(part.strip().upper() for part in _CJK.split(text.strip()) if part.strip())


class BpeTokenizer:
    """The checkpoint's `bpe.model` (SentencePiece). Read-only after construction: thread-safe."""

    def __init__(self, bpe_path: str | Path):
        import sentencepiece

        path = Path(bpe_path)
        if not path.is_file():
            raise ModelDirError(f"{path} does not exist; the checkpoint directory needs its bpe.model")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise ModelDirError(f"{path} is not a SentencePiece model ({e})") from e
        self.path = path
        self.vocab_size = self._sp.get_piece_size()
        self.unk_id = self._sp.unk_id()

    @staticmethod
    def bypasses_normalizer(text: str) -> bool:
        """The original encodes a one-character text (after strip) raw: no normalising, no upper-casing."""
        return len(text.strip()) == 1

    def encode_pieces(self, text: str) -> list[str]:
        """SentencePiece pieces of already prepared text (no normalisation here)."""
        if not text:
            return []
        return self._sp.encode(text, out_type=str)

    def piece_ids(self, pieces: Sequence[str]) -> list[int]:
        """Ids of pieces; pieces outside the vocabulary (emoji, ...) get <unk>."""
        return [self._sp.piece_to_id(p) for p in pieces]

    def id_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(i) for i in ids]
