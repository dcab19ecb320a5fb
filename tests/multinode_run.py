"""Run by tests/test_multinode.py in a process of its own: a Ray cluster of three nodes on this
machine (`ray.cluster_utils.Cluster`), two of them declaring a custom resource that stands in for a
GPU; the real graph on the tiny checkpoint with `accelerator_resource` set, GPT and vocoder
autoscaled with short delays, two ingress replicas over one voices_dir. Phases, in order:

1. placement: a few requests, and the node of every replica;
2. scale: greedy requests from several clients until the GPT and vocoder deployments both reach
   two replicas, then no load until both are back to one; every answer is compared with the same
   request's audio alone;
3. voices: a voice uploaded through the API is used at once by requests spread over both ingresses;
4. replica loss: under load, with two GPT and two vocoder replicas, one replica of each is killed;
   how each request ended (each call on a dead replica is retried once on the other);
5. node loss: the accelerator node holding the GPT replica is removed under load; how each request
   ended, and how long until requests succeed again.

Prints one JSON line with what each phase saw."""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import requests
from ray import serve
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESOURCE = "tts_accel"
APP = "multinode"
# Short delays so that a test sees both directions within a minute or two.
SCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0.5,
           "upscale_delay_s": 1.0, "downscale_delay_s": 8.0, "look_back_period_s": 2.0,
           "metrics_interval_s": 0.5}
TEXTS = [f"Scaling test number {i}, with a few words." for i in range(4)]
CLIENTS = 6
PHASE_LIMIT_S = 120.0
NODE_LOSS_WATCH_S = 45.0     # load kept up after the node leaves


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running() -> dict[str, int]:
    """RUNNING replicas per deployment, from Serve's status."""
    app = serve.status().applications.get(APP)
    if app is None:
        return {}
    return {name: d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items()}


def same_audio(got: bytes, expected: bytes) -> bool:
    """Same length and within one int16 step: what a batched vocoder call may change against an
    unbatched one (float summation order; see BigVGANStage)."""
    a, b = np.frombuffer(got, "<i2").astype(np.int32), np.frombuffer(expected, "<i2").astype(np.int32)
    return len(a) == len(b) and (len(a) == 0 or int(np.abs(a - b).max()) <= 1)


def error_code(r: requests.Response) -> str:
    """The envelope's error code, or what else the body was (Serve's proxy answers in plain text)."""
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "not an error envelope"


def replicas() -> list[dict]:
    from ray.util.state import list_actors
    return [{"deployment": a.class_name.split(":")[-1], "node": a.node_id, "name": a.name}
            for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.startswith(f"ServeReplica:{APP}:")]


def kill_one(deployment: str) -> str:
    """Kill one live replica of `deployment` (Serve starts a new one); its actor name."""
    name = next(r["name"] for r in replicas() if r["deployment"] == deployment)
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


class Load:
    """`clients` threads sending greedy requests in turn until stopped; each answer recorded as
    (sent, answered: seconds since the load began; status, 0 for a cut or refused connection;
    whether its audio matches `expected` (`same_audio`); error code or exception name)."""

    def __init__(self, url: str, expected: list[bytes], clients: int = CLIENTS, voice: str = "alice"):
        self.url, self.expected, self.voice = url, expected, voice
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int, bool, str]] = []
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, c: int) -> None:
        k = c
        while not self.stop.is_set():
            i = k % len(TEXTS)
            k += 1
            sent = time.monotonic() - self.started
            try:
                r = requests.post(self.url, timeout=120, json={
                    "model": "tts-1", "input": TEXTS[i], "voice": self.voice, "response_format": "pcm",
                    "temperature": 0})
                code = "" if r.ok else error_code(r)
                self.results.append((sent, time.monotonic() - self.started, r.status_code,
                                     r.ok and same_audio(r.content, self.expected[i]), code))
            except requests.RequestException as e:    # a cut stream or a refused connection
                self.results.append((sent, time.monotonic() - self.started, 0, False, type(e).__name__))

    def finish(self) -> list[tuple[float, float, int, bool, str]]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=150)
        return self.results


def wait_for(condition, limit_s: float, trace: list) -> float | None:
    """Seconds until `condition(counts)` holds (None past `limit_s`), recording replica counts."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        counts = running()
        trace.append((round(time.monotonic() - started, 1), counts.get("GPT", 0), counts.get("Vocoder", 0)))
        if condition(counts):
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def replica_loss(url: str, expected: list[bytes]) -> dict:
    """Load until GPT and vocoder run two replicas each, kill one of each, and record how every
    request ended; then wait for the scale-down, so the next phase starts from one of each."""
    trace: list = []
    load = Load(url, expected)
    scaled = wait_for(lambda c: c.get("GPT", 0) >= 2 and c.get("Vocoder", 0) >= 2, PHASE_LIMIT_S, trace)
    killed = []
    if scaled is not None:
        time.sleep(2)
        killed.append(kill_one("GPT"))
        time.sleep(4)
        killed.append(kill_one("Vocoder"))
        time.sleep(6)
    results = load.finish()
    wait_for(lambda c: c.get("GPT", 0) == 1 and c.get("Vocoder", 0) == 1, PHASE_LIMIT_S, trace)
    return {"scaled_s": scaled, "killed": killed, "requests": len(results),
            "failed": [r for r in results if not r[3]]}


def main() -> None:
    from serve_app.app import build_application

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    accel = [cluster.add_node(num_cpus=2, resources={RESOURCE: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    out: dict = {"accelerator_nodes": [n.node_id for n in accel], "head_node": cluster.head_node.node_id}
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/audio/speech"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        voices = Path(tempfile.mkdtemp(prefix="multinode-voices-"))
        for name in ("alice", "bob"):
            (voices / f"{name}.wav").write_bytes((ROOT / "examples" / "voices" / f"{name}.wav").read_bytes())
        (voices / "speaker.json").write_text(json.dumps({"alice": ["alice.wav"], "bob": ["bob.wav"]}))
        app = build_application({"model_dir": str(ROOT / "tests" / "golden" / "tiny"), "device": "cpu",
                         "gpt_engine": "torch", "voices_dir": str(voices), "ui": False,
                         "accelerator_resource": RESOURCE, "gpt_num_gpus": 0.5, "vocoder_num_gpus": 0.5,
                         "replica_num_cpus": 0.5},
                        overrides={"GPT": {"autoscaling_config": SCALING},
                                   "Vocoder": {"autoscaling_config": SCALING},
                                   "Ingress": {"num_replicas": 2}})
        serve.run(app, name=APP, route_prefix="/")

        # 1. placement, and each request's audio alone
        alone = [requests.post(url, timeout=120, json={"model": "tts-1", "input": text, "voice": "alice",
                                                       "response_format": "pcm", "temperature": 0})
                 for text in TEXTS]
        out["statuses"] = [r.status_code for r in alone]
        expected = [r.content for r in alone]
        out["replicas"] = replicas()

        # 2. scale up under load, down after it
        trace: list = []
        load = Load(url, expected)
        up = wait_for(lambda c: c.get("GPT", 0) >= 2 and c.get("Vocoder", 0) >= 2, PHASE_LIMIT_S, trace)
        time.sleep(3)                                    # a few requests on the scaled-up graph
        results = load.finish()
        down = wait_for(lambda c: c.get("GPT", 0) == 1 and c.get("Vocoder", 0) == 1, PHASE_LIMIT_S, trace)
        out["scale"] = {"up_s": up, "down_s": down, "trace": trace, "requests": len(results),
                        "failed": [r for r in results if not r[3]]}

        # 3. an uploaded voice, at once through both ingress replicas
        upload = requests.post(f"{base}/v1/audio/voices", timeout=60, data={"name": "carol"},
                               files={"audio_sample": ("carol.wav", (ROOT / "examples" / "voices" / "alice.wav")
                                                       .read_bytes(), "audio/wav")})
        uses = [requests.post(url, timeout=120, json={"model": "tts-1", "input": TEXTS[0], "voice": "carol",
                                                      "response_format": "pcm", "temperature": 0}).status_code
                for _ in range(6)]
        out["voices"] = {"upload": upload.status_code, "uses": uses,
                         "ingress_replicas": running().get("Ingress", 0)}

        # 4. one GPT and one vocoder replica killed under load, two of each running
        out["replica_loss"] = replica_loss(url, expected)

        # 5. the node holding the GPT replica leaves under load
        gpt_nodes = {r["node"] for r in replicas() if r["deployment"] == "GPT"}
        victim = next(n for n in accel if n.node_id in gpt_nodes)
        load = Load(url, expected, clients=3)
        time.sleep(3)
        removed_at = time.monotonic() - load.started
        cluster.remove_node(victim)
        time.sleep(NODE_LOSS_WATCH_S)
        results = sorted(load.finish())
        # whole again: from the first request sent after the removal that succeeded, with every
        # later one succeeding too
        after = [r for r in results if r[0] > removed_at]
        ok_from = next((i for i in range(len(after)) if all(r[3] for r in after[i:])), None)
        out["node_loss"] = {"removed_at_s": removed_at, "results": results,
                            "whole_again_after_s": None if ok_from is None or not after[ok_from:]
                            else after[ok_from][0] - removed_at}
        print(json.dumps(out), flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
