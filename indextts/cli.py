"""The `indextts` command: check a checkpoint, run the text frontend, synthesise speech."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from indextts.errors import IndexTTSError

logger = logging.getLogger("indextts")


def _check(args: argparse.Namespace) -> int:
    from indextts.checkpoint import check_model_dir

    report = check_model_dir(args.model_dir)
    print(f"checking {report.model_dir}")
    for note in report.notes:
        print(f"  ok: {note}")
    for problem in report.problems:
        print(f"  PROBLEM: {problem}")
    print("result: loadable" if report.ok else f"result: NOT loadable ({len(report.problems)} problem(s))")
    return 0 if report.ok else 1


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="validate a checkpoint directory against our model",
                       description="Validate MODEL_DIR (or a hub id): files, config, every weight name "
                                   "and shape. Exit status 0 only when it would load.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.set_defaults(func=_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indextts", description="IndexTTS 1.0/1.5 zero-shot voice-cloning text-to-speech.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(sub)
    for module_name, adder in _OPTIONAL_COMMANDS:
        try:
            module = __import__(module_name, fromlist=[adder])
        except ImportError as e:  # a command whose optional dependencies are missing
            logger.debug("command from %s unavailable: %s", module_name, e)
            continue
        getattr(module, adder)(sub)
    return parser


# Commands living next to the code they drive; each module registers its own sub-parser.
_OPTIONAL_COMMANDS = (
    ("indextts.text.cli", "add_frontend_parser"),
    ("indextts.synth_cli", "add_synth_parser"),
    ("indextts.random_checkpoint", "add_random_checkpoint_parser"),
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.verbose:        # vLLM's engine (and its subprocesses) speak up only for warnings
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        return int(args.func(args) or 0)
    except IndexTTSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """The console command: `main`, then an exit that skips the interpreter's teardown. Everything
    is written and every engine shut down by then; the teardown would only print nanobind's leak
    report for Triton's bindings, which vLLM keeps referenced until exit."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
