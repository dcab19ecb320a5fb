#!/usr/bin/env python
"""Build the text-normalisation grammar cache once (WeTextProcessing 1.0.4.1 + pynini 2.1.6).

    pip install WeTextProcessing==1.0.4.1 pynini==2.1.6
    python scripts/text_build_grammars.py [--cache-dir DIR] [--force]

Prints the grammar directory. Serving machines need only `kaldifst` and that directory: copy it
to `<cache>/text-grammars/` there (cache: --cache-dir, $INDEXTTS_CACHE_DIR or ~/.cache/indextts),
e.g. in a container image build stage. Takes about 40 s and 7 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from indextts.text.grammars import GrammarError, ensure_grammars, find_grammars, grammar_dir, resolve_cache_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $INDEXTTS_CACHE_DIR or ~/.cache/indextts)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete cache exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.force and find_grammars(args.cache_dir):
        shutil.rmtree(grammar_dir(resolve_cache_root(args.cache_dir)))
    try:
        grammars = ensure_grammars(args.cache_dir)
    except GrammarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"grammar_dir": str(grammars.directory), **grammars.manifest}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
