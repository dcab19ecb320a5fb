"""Placement on a simulated cluster (issue 22): GPT and vocoder replicas land only on the nodes
that declare the accelerator resource; the frontend and ingress may land anywhere. The cluster
(`ray.cluster_utils.Cluster`) runs in a process of its own (tests/multinode_run.py), since this
test session already holds a Ray instance of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")


def test_gpu_stages_are_placed_on_accelerator_nodes_and_requests_succeed():
    script = Path(__file__).with_name("multinode_run.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["statuses"] == [200] * 4
    by_deployment: dict[str, set] = {}
    for replica in result["replicas"]:
        by_deployment.setdefault(replica["deployment"], set()).add(replica["node"])
    assert set(by_deployment) == {"Ingress", "Frontend", "GPT", "Vocoder"}
    accelerators = set(result["accelerator_nodes"])
    assert by_deployment["GPT"] <= accelerators and by_deployment["Vocoder"] <= accelerators
    assert result["head_node"] not in by_deployment["GPT"] | by_deployment["Vocoder"]
