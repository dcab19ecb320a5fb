"""Host time per engine step, per engine and level, from a paired decode run measured with
bench/step_site (BENCH_STEP_DIR): where each engine core's step goes at each concurrency.

    python bench/step_summary.py decode_paired.json steps/ [--json out.json]

For each measured row of the paired run (engine, level, repeat: a wall-clock window), the
engine-core process with the most steps in that window is the one measured (the other engine is
idle then; its model name from the records must match the row's engine). Per row: the steps in
the window and, per step, the mean milliseconds of the whole engine step and of its parts
(bench/step_site/sitecustomize.py lists them), the running requests and the block-table writes.
Printed per engine and level: the median over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

KINDS = ("step", "sched", "exec", "sample", "update", "bt")


def load_steps(step_dir: Path) -> dict[int, dict]:
    """pid -> {"model": name or None, "records": [[wall, kind, seconds, a, b], ...] sorted by time}."""
    out = {}
    for path in sorted(step_dir.glob("*.jsonl")):
        model, records = None, []
        for line in path.read_text().splitlines():
            if line.startswith("["):
                records.append(json.loads(line))
            elif line.startswith("{"):
                model = json.loads(line)["model"] or model
        out[int(path.stem)] = {"model": model, "records": sorted(records)}
    return out


def engine_of(model: str | None) -> str:
    return "stock-vllm-gpt2" if model and "gpt2-stock" in model else "indextts-vllm-raw"


def row_summary(row: dict, processes: dict[int, dict], engines: dict[int, str]) -> dict | None:
    """`engines` (pid -> engine) is filled as rows are read: a process must be the same engine
    in every row, and its model name (where recorded) must say so."""
    start, end = row["started_at"], row["ended_at"]
    best, inside = None, []
    for pid, proc in processes.items():
        recs = [r for r in proc["records"] if start <= r[0] <= end]
        if sum(r[1] == "step" for r in recs) > sum(r[1] == "step" for r in inside):
            best, inside = pid, recs
    if best is None:
        return None
    model = processes[best]["model"]
    if engines.setdefault(best, row["engine"]) != row["engine"] or (model and engine_of(model) != row["engine"]):
        raise ValueError(f"the busiest engine core between {start} and {end} (pid {best}, model {model}) "
                         f"was {engines[best]} before, but the row is {row['engine']}")
    by_kind = defaultdict(list)
    for r in inside:
        by_kind[r[1]].append(r)
    steps = len(by_kind["step"])
    scheduled = [r for r in by_kind["sched"] if r[4]]
    out = {"engine": row["engine"], "concurrency": row["concurrency"], "repeat": row["repeat"],
           "steps": steps, "model_steps": len(scheduled), "window_s": end - start,
           "running_mean": statistics.mean(r[3] for r in scheduled) if scheduled else 0.0}
    for kind in sorted(set(KINDS) | set(by_kind), key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k)):
        out[f"{kind}_ms_per_step"] = 1e3 * sum(r[2] for r in by_kind[kind]) / max(len(scheduled), 1)
    out["bt_rows_per_step"] = sum(r[3] or 0 for r in by_kind["bt"]) / max(len(scheduled), 1)
    out["bt_ids_per_step"] = sum(r[4] or 0 for r in by_kind["bt"]) / max(len(scheduled), 1)
    out["host_ms_per_step"] = sum(out[f"{k}_ms_per_step"] for k in ("sched", "exec", "sample", "update"))
    out["period_ms"] = 1e3 * (end - start) / max(len(scheduled), 1)
    return out


def summarise(paired: dict, processes: dict[int, dict]) -> list[dict]:
    engines: dict[int, str] = {}
    rows = [s for r in paired["rows"] if (s := row_summary(r, processes, engines))]
    groups = defaultdict(list)
    for s in rows:
        groups[(s["concurrency"], s["engine"])].append(s)
    table = []
    for (level, engine), group in sorted(groups.items()):
        keys = [k for k in group[0] if k not in ("engine", "concurrency", "repeat")]
        table.append({"concurrency": level, "engine": engine, "repeats": len(group),
                      **{k: statistics.median(g[k] for g in group) for k in keys}})
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paired", type=Path, help="bench_decode.py --engine paired output")
    p.add_argument("steps", type=Path, help="the BENCH_STEP_DIR of that run")
    p.add_argument("--json", type=Path, help="also write the table here")
    args = p.parse_args()
    data = json.loads(args.paired.read_text())
    table = summarise(data.get("paired", data), load_steps(args.steps))
    parts = dict.fromkeys(k for t in table for k in t if k.endswith("_ms_per_step"))
    cols = ["period_ms", "step_ms_per_step", "host_ms_per_step"] + [
        k for k in parts if k not in ("step_ms_per_step", "host_ms_per_step")] + ["bt_ids_per_step", "running_mean"]
    print("medians over repeats; ms per model step (steps that ran the model); exec.* are parts of exec")
    print(f"{'level':>5} {'engine':<18} {'steps':>6} " + " ".join(f"{c.removesuffix('_per_step'):>13}" for c in cols))
    for t in table:
        print(f"{t['concurrency']:>5} {t['engine']:<18} {t['model_steps']:>6.0f} "
              + " ".join(f"{t.get(c, 0.0):>13.3f}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
