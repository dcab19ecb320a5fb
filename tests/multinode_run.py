"""Run by tests/test_multinode.py in a process of its own: a Ray cluster of three nodes on this
machine (`ray.cluster_utils.Cluster`), two of them declaring a custom resource that stands in for a
GPU; the real graph on the tiny checkpoint with `accelerator_resource` set. Prints one JSON line:
the HTTP statuses of a few requests and the node of every replica."""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

import ray
import requests
from ray import serve
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESOURCE = "tts_accel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from serve_app.app import build_app

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    accel = [cluster.add_node(num_cpus=2, resources={RESOURCE: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        voices = Path(tempfile.mkdtemp(prefix="multinode-voices-"))
        for name in ("alice", "bob"):
            (voices / f"{name}.wav").write_bytes((ROOT / "examples" / "voices" / f"{name}.wav").read_bytes())
        (voices / "speaker.json").write_text(json.dumps({"alice": ["alice.wav"], "bob": ["bob.wav"]}))
        app = build_app({"model_dir": str(ROOT / "tests" / "golden" / "tiny"), "device": "cpu",
                         "gpt_engine": "torch", "voices_dir": str(voices), "ui": False,
                         "accelerator_resource": RESOURCE, "gpt_num_gpus": 0.5, "vocoder_num_gpus": 0.5,
                         "replica_num_cpus": 0.5})
        serve.run(app, name="multinode", route_prefix="/")
        statuses = [requests.post(f"http://127.0.0.1:{port}/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "input": f"Node test {i}.", "voice": "alice" if i % 2 else "bob",
            "response_format": "pcm", "temperature": 0}).status_code for i in range(4)]
        from ray.util.state import list_actors
        replicas = [{"deployment": a.class_name.split(":")[-1], "node": a.node_id}
                    for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                    if a.class_name.startswith("ServeReplica:multinode:")]
        print(json.dumps({"statuses": statuses, "replicas": replicas,
                          "accelerator_nodes": [n.node_id for n in accel],
                          "head_node": cluster.head_node.node_id}), flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
