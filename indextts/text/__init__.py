"""Text frontend of IndexTTS 1.0/1.5: normalisation, BPE tokenisation, segmentation.

`TextFrontend` is the entry point; see frontend.py. The normalisation grammars are compiled once
into a cache directory (grammars.py) and run with kaldifst (wetext.py).
"""

from indextts.text.frontend import DEFAULT_MAX_TOKENS, FrontendOptions, TextFrontend
from indextts.text.grammars import GrammarError, ensure_grammars, find_grammars, resolve_cache_root
from indextts.text.segmenter import HardSplitWarning

__all__ = ["DEFAULT_MAX_TOKENS", "FrontendOptions", "GrammarError", "HardSplitWarning", "TextFrontend",
           "ensure_grammars", "find_grammars", "resolve_cache_root"]
