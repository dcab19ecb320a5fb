"""Garbage-collector timing for every Python process of a benchmark (vLLM's engine cores
included), on when BENCH_GC_DIR is set: `PYTHONPATH=bench/gc_site:$PYTHONPATH`.

Each process appends, at most every second, its cumulative collection count and time per
generation to BENCH_GC_DIR/<pid>.jsonl (wall clock `time.time()`, process name), so the
collector's share of a measured window can be read off by the window's start and end."""

import os

if os.environ.get("BENCH_GC_DIR"):
    import gc
    import json
    import multiprocessing
    import sys
    import time

    _dir = os.environ["BENCH_GC_DIR"]
    _state = {"start": 0.0, "last_dump": 0.0, "count": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}

    def _dump(now: float) -> None:
        os.makedirs(_dir, exist_ok=True)
        with open(os.path.join(_dir, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps({"time": now, "pid": os.getpid(), "process": multiprocessing.current_process().name,
                                "argv": sys.argv[:3], "count": _state["count"],
                                "seconds": _state["seconds"]}) + "\n")

    def _callback(phase: str, info: dict) -> None:
        if phase == "start":
            _state["start"] = time.perf_counter()
            return
        generation = info["generation"]
        _state["count"][generation] += 1
        _state["seconds"][generation] += time.perf_counter() - _state["start"]
        now = time.time()
        if now - _state["last_dump"] >= 1.0:
            _state["last_dump"] = now
            _dump(now)

    gc.callbacks.append(_callback)
