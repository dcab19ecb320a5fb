"""Helpers shared by the benchmark scripts (run as `python bench/<script>.py`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
TINY_VOICE = str(Path(__file__).parent.parent / "tests/golden/tiny/ref_a.wav")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def gpu_memory_mib() -> float | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (all processes, vLLM's engine core too)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def physical_cores() -> list[set[int]]:
    """The CPUs this process may use, grouped by physical core (hyperthread siblings together),
    in CPU order."""
    allowed = os.sched_getaffinity(0)
    cores: dict[frozenset, None] = {}
    for cpu in sorted(allowed):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings = _cpu_list(path.read_text()) if path.exists() else {cpu}
        cores[frozenset(siblings & allowed)] = None
    return [set(c) for c in cores]


def _cpu_list(text: str) -> set[int]:
    """"0-3,8" -> {0, 1, 2, 3, 8}"""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def pin_threads(cpus: set[int]) -> None:
    """Every thread of this process onto `cpus`; processes spawned afterwards inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:         # the thread has ended
            pass


def write_json(path: str | Path, data: dict) -> None:
    """(Re)write a results file; scripts call it after every level so a cut-off run keeps its rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def add_stream_args(p: argparse.ArgumentParser, levels: list[int], gpu_memory_utilization: float) -> None:
    """The arguments the two streaming benchmarks (in process and over HTTP) share."""
    p.add_argument("--model-dir", required=True)
    p.add_argument("--voice", default=TINY_VOICE)
    p.add_argument("--device", default="cuda")
    p.add_argument("--levels", type=int, nargs="+", default=levels, help="concurrency levels")
    p.add_argument("--segments", type=int, default=4, help="sentences (segments) per request")
    p.add_argument("--segment-codes", type=int, default=59, help="codes per segment (4 x 59 = 10.07 s)")
    p.add_argument("--gpu-memory-utilization", type=float, default=gpu_memory_utilization)
    p.add_argument("--chunk-schedule", default=None,
                   help="codes per GPT chunk, e.g. 40,24,48,96, or 'whole' (segment-level streaming, the "
                        "previous path); default: the library's")
    p.add_argument("--vocoder-lookahead", type=int, default=None,
                   help="latent frames the vocoder waits for (default: its receptive field, exact)")
    p.add_argument("--out", required=True)


def stream_row(arrivals: list[float], durations: list[float]) -> dict:
    """One streamed request: chunk arrival times (s from the request) and their audio lengths (s).
    Real-time: no chunk arrived later than the audio before it finished playing, counted from the
    first chunk."""
    played, real_time = 0.0, True
    for t, d in zip(arrivals, durations):
        real_time = real_time and t - arrivals[0] <= played + 1e-3
        played += d
    total = arrivals[-1]
    return {"ttfa_s": arrivals[0], "total_s": total, "audio_s": played, "rtf": total / played,
            "real_time": real_time}


def level_summary(level: int, wall: float, rows: list[dict]) -> dict:
    """Medians and p95s over a level's `stream_row`s, plus throughput and GPU memory."""
    return {
        "concurrency": level, "wall_s": wall,
        "audio_s_per_wall_s": sum(r["audio_s"] for r in rows) / wall,
        "ttfa_median_s": statistics.median(r["ttfa_s"] for r in rows),
        "ttfa_p95_s": percentile([r["ttfa_s"] for r in rows], 0.95),
        "rtf_median": statistics.median(r["rtf"] for r in rows),
        "rtf_p95": percentile([r["rtf"] for r in rows], 0.95),
        "real_time_share": sum(r["real_time"] for r in rows) / len(rows),
        "audio_s_per_request": statistics.mean(r["audio_s"] for r in rows),
        "gpu_memory_mib": gpu_memory_mib(),
    }
