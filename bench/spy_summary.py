"""Summarise py-spy "raw" (collapsed stack) files: per process, the functions with the most
samples on their own (self) and on the stack (total).

    python bench/spy_summary.py spy_ours_raw.txt spy_stock.txt [--top 25]
    python bench/spy_summary.py --compare spy_ours_raw_256.txt spy_stock_256.txt [--process EngineCore]

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


def compare(a: Path, b: Path, process: str, top: int) -> str:
    """Samples per function of one process kind in two files, side by side, largest difference
    first (same sampling rate: samples are time)."""
    def pick(path: Path):
        found = [v for k, v in summarise(path).items() if process in k]
        samples = sum(v[0] for v in found)
        own, total = Counter(), Counter()
        for _, o, t in found:
            own.update(o)
            total.update(t)
        return samples, own, total

    (na, own_a, tot_a), (nb, own_b, tot_b) = pick(a), pick(b)
    lines = [f"{process}: {na} samples in {a.name}, {nb} in {b.name}"]
    for title, x, y in (("total (on the stack)", tot_a, tot_b), ("self", own_a, own_b)):
        lines.append(f"--- {title}: {a.name} {b.name} difference")
        keys = {k for k, _ in x.most_common(4 * top)} | {k for k, _ in y.most_common(4 * top)}
        for k in sorted(keys, key=lambda k: -(x[k] - y[k]))[:top]:
            lines.append(f"  {x[k]:6d} {y[k]:6d} {x[k] - y[k]:+6d}  {k}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--compare", action="store_true", help="two files side by side for one process kind")
    p.add_argument("--process", default="EngineCore", help="process name to compare (substring)")
    args = p.parse_args()
    if args.compare:
        if len(args.files) != 2:
            p.error("--compare takes two files")
        print(compare(*args.files, args.process, args.top))
        return 0
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
