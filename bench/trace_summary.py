"""Summarise torch profiler traces (vLLM's `--profiler-config`, written by
`probe_admission.py --torch-profile-dir`): where an engine step's GPU and CPU time goes.

    python bench/trace_summary.py DIR_OR_TRACE [...] [--top 25]

Per trace: the window it covers, how much of it the GPU was busy (union of kernel, copy and
set intervals), the kernels with the most time, the CUDA runtime calls (launches, copies,
synchronisations: the CPU waiting on the GPU shows here), the CPU ops and the annotated
ranges. Divide by the number of profiled steps (30 in probe_admission) for per-step numbers.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def by_name(events: list[dict]) -> tuple[Counter, Counter]:
    time, count = Counter(), Counter()
    for e in events:
        time[e["name"]] += e["dur"]
        count[e["name"]] += 1
    return time, count


def summarise(path: Path, top: int) -> str:
    events = load(path)
    groups: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        cat = e.get("cat", "")
        groups["gpu" if cat in GPU_CATEGORIES else cat].append(e)
    lines = [f"=== {path}"]
    if not events:
        return "\n".join(lines + ["(no events)"])
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e["dur"] for e in events)
    lines.append(f"window {1e-3 * (end - start):.2f} ms, {len(events)} events")
    gpu = groups.get("gpu", [])
    if gpu:
        g0 = min(e["ts"] for e in gpu)
        g1 = max(e["ts"] + e["dur"] for e in gpu)
        busy = union_length([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
        lines.append(f"GPU: first to last activity {1e-3 * (g1 - g0):.2f} ms, busy {1e-3 * busy:.2f} ms "
                     f"({100 * busy / max(g1 - g0, 1e-9):.1f}%), {len(gpu)} kernels/copies")
    for group, title in (("gpu", "GPU kernels and copies"), ("cuda_runtime", "CUDA runtime calls"),
                         ("cuda_driver", "CUDA driver calls"), ("cpu_op", "CPU ops (inclusive)"),
                         ("user_annotation", "annotated ranges"), ("gpu_user_annotation", "GPU annotated ranges")):
        if group not in groups:
            continue
        time, count = by_name(groups[group])
        lines.append(f"--- {title}: total {1e-3 * sum(time.values()):.2f} ms")
        for name, us in time.most_common(top):
            lines.append(f"  {1e-3 * us:9.2f} ms  {count[name]:7d}x  {name[:150]}")
    return "\n".join(lines)


def traces(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out.extend(sorted(p.rglob("*.json*")) if p.is_dir() else [p])
    return [p for p in out if p.name.endswith((".json", ".json.gz"))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for path in traces(args.paths):
        print(summarise(path, args.top), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
