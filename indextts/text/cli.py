"""`indextts frontend`: print what the text frontend makes of a text, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from indextts.errors import OptionsError
from indextts.text.frontend import DEFAULT_MAX_TOKENS


def add_frontend_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `frontend` sub-command on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "frontend", help="normalise, tokenise and segment a text (JSON)",
        description="Print {normalized, pieces, ids, segments} for TEXT as JSON: the original's "
                    "normalisation, the checkpoint's bpe.model, and segments of at most N tokens.")
    p.add_argument("--model-dir", required=True, help="checkpoint directory (or hub id) with bpe.model")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"segment limit in BPE tokens (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--cache-dir", default=None,
                   help="grammar cache root (default $INDEXTTS_CACHE_DIR or ~/.cache/indextts)")
    p.add_argument("text", metavar="TEXT", help="the text; '-' reads standard input")
    p.set_defaults(func=frontend_command)
    return p


def frontend_command(args: argparse.Namespace, out=None) -> int:
    """Handler of `indextts frontend`; writes one JSON object to `out` (stdout)."""
    from indextts.text.frontend import TextFrontend

    if args.max_tokens < 1:
        raise OptionsError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    text = sys.stdin.read() if args.text == "-" else args.text
    frontend = TextFrontend.from_model_dir(args.model_dir, cache_dir=args.cache_dir)
    with warnings.catch_warnings(record=True) as caught:   # a CLI reports the hard split in its output
        warnings.simplefilter("always")
        result = frontend.process(text, max_tokens=args.max_tokens)
    payload = {"normalized": result.normalized, "pieces": list(result.pieces), "ids": list(result.ids),
               "segments": [list(s.ids) for s in result.segments]}
    hard_split = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if hard_split:
        print(f"warning: {hard_split[0]}", file=sys.stderr)
    (out or sys.stdout).write(json.dumps(payload, ensure_ascii=False) + "\n")
    return 0
