#!/usr/bin/env python
"""Text frontend benchmark: normalisation throughput and first-use grammar build time.

    python bench/bench_frontend.py [--seconds 10] [--skip-build] [--out result.json]

Throughput is measured on the golden sentences (tests/golden/text/frontend_cases.json, the
non-empty ones), one call per sentence, single thread, warm grammars: `normalize` alone and the
whole `process` (normalise + BPE + segment). The build time is a cold build into a fresh
temporary cache directory, exactly what the first use on a new machine does (child process;
needs WeTextProcessing==1.0.4.1 and pynini==2.1.6; about 7 GB of memory).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def _throughput(fn, sentences: list[str], seconds: float) -> dict:
    calls, chars = 0, 0
    started = time.perf_counter()
    cpu_started = time.thread_time()
    while time.perf_counter() - started < seconds or calls < len(sentences):
        sentence = sentences[calls % len(sentences)]
        fn(sentence)
        calls += 1
        chars += len(sentence)
    wall = time.perf_counter() - started
    cpu = time.thread_time() - cpu_started
    return {"sentences": calls, "sentences_per_s": round(calls / wall, 1),
            "chars_per_s": round(chars / wall), "cpu_sentences_per_s": round(calls / cpu, 1),
            "mean_ms": round(1000 * wall / calls, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per throughput measurement")
    parser.add_argument("--skip-build", action="store_true", help="do not measure the cold grammar build")
    parser.add_argument("--cache-dir", default=None, help="warm grammar cache root (default: the user's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from indextts.text import TextFrontend, ensure_grammars
    from indextts.text.normalizer import use_chinese

    result: dict = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}
    if not args.skip_build:
        with tempfile.TemporaryDirectory(prefix="indextts-cold-cache-") as cold:
            started = time.perf_counter()
            ensure_grammars(cold)
            result["grammar_build"] = {
                "first_use_build_s": round(time.perf_counter() - started, 1),
                "builder_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)}

    started = time.perf_counter()
    grammars = ensure_grammars(args.cache_dir)
    frontend = TextFrontend(GOLDEN / "tiny" / "bpe.model", grammars=grammars)
    result["warm_start_s"] = round(time.perf_counter() - started, 3)
    result["grammar_cache_mb"] = round(sum(f["size"] for f in grammars.manifest["files"].values()) / 2**20, 1)

    cases = json.loads((GOLDEN / "text" / "frontend_cases.json").read_text())["cases"]
    sentences = [c["text"] for c in cases if c["text"].strip()]
    mixes = {"all": sentences, "zh": [s for s in sentences if use_chinese(s)],
             "en": [s for s in sentences if not use_chinese(s)]}
    result["sentences"] = {k: {"count": len(v), "mean_chars": round(sum(map(len, v)) / len(v), 1)}
                           for k, v in mixes.items()}
    per_mix = args.seconds / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result["normalize"] = {k: _throughput(frontend.normalize, v, per_mix) for k, v in mixes.items()}
        result["process"] = {"all": _throughput(frontend.process, sentences, per_mix)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
