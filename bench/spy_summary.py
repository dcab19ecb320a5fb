"""Summarise py-spy "raw" (collapsed stack) files: per process, the functions with the most
samples on their own (self) and on the stack (total).

    python bench/spy_summary.py spy_ours_raw.txt spy_stock.txt [--top 25]

Written for `probe_admission.py --py-spy-dir`: compare the engine core's time per function
between our engine and stock vLLM at the same concurrency.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_PROCESS = re.compile(r'^process \d+:"([^"]*)"$')


def summarise(path: Path) -> dict[str, tuple[int, Counter, Counter]]:
    """process name -> (samples, self samples per function, total samples per function)."""
    out: dict[str, list] = defaultdict(lambda: [0, Counter(), Counter()])
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        names = [m.group(1) for f in frames if (m := _PROCESS.match(f))]
        process = names[-1] if names else "?"
        funcs = [f for f in frames if not _PROCESS.match(f)]
        entry = out[process]
        entry[0] += n
        if funcs:
            entry[1][funcs[-1]] += n
        for f in set(funcs):
            entry[2][f] += n
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for path in args.files:
        print(f"=== {path.name}")
        for process, (samples, own, total) in sorted(summarise(path).items(), key=lambda kv: -kv[1][0]):
            print(f"--- {process}: {samples} samples")
            print("  self:")
            for func, n in own.most_common(args.top):
                print(f"    {100 * n / samples:5.1f}%  {func}")
            print("  total:")
            for func, n in total.most_common(args.top):
                print(f"    {100 * n / samples:5.1f}%  {func}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
