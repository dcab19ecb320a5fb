"""`bench/load.py` against the real graph on the tiny checkpoint (the README's CPU try-out)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import load  # noqa: E402


def test_constant_load_reports_throughput_first_audio_and_no_errors(tiny_app, tmp_path, capsys):
    url, _ = tiny_app
    out = tmp_path / "load.json"
    code = load.main(["--url", url, "--concurrency", "2", "--duration-s", "4", "--voices", "alice,bob",
                      "--texts", "short", "--greedy", "--out", str(out)])
    summary = json.loads(out.read_text())
    assert code == 0 and summary["requests"] == summary["ok"] >= 2
    assert summary["errors_by_status"] == {}
    assert summary["audio_s"] > 0 and summary["ttfa_s"]["p50"] > 0 and summary["rtf"]["p50"] > 0
    assert all(r["audio_s"] > 0 and r["ttfa_s"] <= r["total_s"] for r in summary["results"])
    assert sum(s["requests"] for s in summary["per_second"]) == summary["ok"]
    assert '"ttfa_s"' in capsys.readouterr().out


def test_errors_are_counted_by_status_and_the_exit_code_says_so(tiny_app, tmp_path):
    url, _ = tiny_app
    out = tmp_path / "load.json"
    code = load.main(["--url", url, "--concurrency", "1", "--duration-s", "10", "--max-requests", "2",
                      "--voices", "nobody", "--out", str(out)])
    summary = json.loads(out.read_text())
    assert code == 1 and summary["ok"] == 0 and summary["errors_by_status"] == {"400": 2}


def test_ramp_steps_and_bad_arguments():
    plan = load.Plan([(1, 2.0), (4, 3.0)])
    assert (plan.duration, plan.workers_at(1.0), plan.workers_at(2.5), plan.workers_at(9)) == (5.0, 1, 4, 0)
    with pytest.raises(SystemExit):
        load.parse_args(["--url", "http://x", "--ramp", "0:10"])
    with pytest.raises(SystemExit):
        load.parse_args(["--url", "http://x", "--texts", "epic"])
