"""Helpers shared by the benchmark scripts (run as `python bench/<script>.py`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

CODES_PER_SECOND = 23.4375     # one code is 1024 samples at 24 kHz


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


def write_json(path: str | Path, data: dict) -> None:
    """(Re)write a results file; scripts call it after every level so a cut-off run keeps its rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
