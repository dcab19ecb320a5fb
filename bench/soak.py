"""Soak: a running deployment under a fixed concurrency for a bounded time, every answer checked.

    python bench/soak.py --url http://127.0.0.1:8000 --duration-s 600 --out soak.json
    python bench/soak.py --start-tiny --duration-s 60 --out /tmp/soak60.json   # its own Ray + Serve (tiny checkpoint)

Each of `--concurrency` workers sends one request after another until `--duration-s` has passed,
drawn (seeded) from a mix: short, medium and long texts; single voices and weighted mixes; every
response format; streamed and whole reads; SSE events; the streaming variant's PCM and WAV routes;
greedy (temperature 0) and seeded sampling; and, one in `--bad-every`, a bad request that must be
refused with a 4xx envelope carrying a code.

Checks: a valid request must answer 200 (else it counts as a failure under its status); its audio
must decode (pcm: even length > 0; wav and flac with soundfile; mp3, opus and aac with PyAV), or it
counts as garbled; a greedy request must last as long as the same request made once at the start
(lossless formats: the same sample count; mp3, aac and opus within their codec padding).
Memory: the RSS of each Serve replica process (`ray::ServeReplica:<app>:<Deployment>`) after the
start-up requests and at the end, sampled in between. Exit status 0 when nothing failed, nothing
was garbled and every bad request was refused.
"""

from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import av
import psutil
import requests
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SR = 24000
FORMATS = ("pcm", "wav", "flac", "mp3", "opus", "aac")
LOSSLESS = ("pcm", "wav", "flac")
CODEC_SLACK_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03}     # encoder priming and padding, decoded
TEXTS = {
    "short": "Hi there.",
    "medium": "The quick brown fox jumps over the lazy dog near the river bank.",
    "long": "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith "
            "slipped quickly through the glass doors of Victory Mansions. The hallway smelt of boiled "
            "cabbage and old rag mats. At one end of it a coloured poster had been tacked to the wall.",
}
TEXT_WEIGHTS = {"short": 5, "medium": 3, "long": 2}
# Bad requests: (label, route, JSON body or raw bytes). Each must get a 4xx envelope with a code.
BAD = [
    ("empty-input", "/v1/audio/speech", {"model": "tts-1", "input": "", "voice": "{voice}"}),
    ("nothing-to-speak", "/v1/audio/speech", {"model": "tts-1", "input": "!!! ...", "voice": "{voice}"}),
    ("unknown-voice", "/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "nobody-soak"}),
    ("bad-weight", "/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "{voice}:-1"}),
    ("bad-format", "/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "{voice}",
                                        "response_format": "ogg"}),
    ("top_p-0", "/v1/audio/speech", {"model": "tts-1", "input": "Hi.", "voice": "{voice}", "top_p": 0}),
    ("not-json", "/v1/audio/speech", b"{not json"),
    ("variant-unknown-reference", "/index-tts/v1/tts_stream", {"text": "Hi.", "reference_id": "nobody-soak"}),
]
REPLICA = re.compile(r"^ray::ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[A-Za-z0-9_-]+)")


class Garbled(Exception):
    """An audio answer that does not decode to what was asked."""


@dataclass(frozen=True)
class Job:
    label: str                          # what the summary groups by
    route: str
    body: object                        # a JSON body, or raw bytes
    fmt: str = "pcm"
    stream: bool = False                # read the answer as it arrives
    sse: bool = False
    bad: bool = False
    greedy_key: Optional[tuple] = None  # (text label, voice): compared with the start-up reference


@dataclass
class Tally:
    """Results of the run, shared by the workers (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter = field(default_factory=Counter)       # by label
    failures: Counter = field(default_factory=Counter)       # valid requests, by status
    garbled: list = field(default_factory=list)
    bad_not_refused: list = field(default_factory=list)
    seconds: list = field(default_factory=list)               # valid requests, wall time each
    ttfb: list = field(default_factory=list)                  # streamed reads, first byte
    audio_s: float = 0.0

    def add(self, job: Job, outcome: dict) -> None:
        with self.lock:
            self.requests[job.label] += 1
            if job.bad:
                if not outcome["ok"]:
                    self.bad_not_refused.append(outcome)
                return
            if outcome.get("status") != 200:
                self.failures[str(outcome.get("status"))] += 1
            elif not outcome["ok"]:
                self.garbled.append(outcome)
            else:
                self.seconds.append(outcome["seconds"])
                self.audio_s += outcome["audio_s"]
                if outcome.get("ttfb_s") is not None:
                    self.ttfb.append(outcome["ttfb_s"])


# -- audio checks -----------------------------------------------------------------------------

def decode(data: bytes, fmt: str) -> tuple[int, float]:
    """(frames at 24 kHz for lossless formats else 0, seconds) of an answer; `Garbled` if it is not
    what `fmt` promises."""
    if not data:
        raise Garbled("empty answer")
    if fmt == "pcm":
        if len(data) % 2:
            raise Garbled(f"odd pcm length {len(data)}")
        return len(data) // 2, len(data) / 2 / SR
    try:
        if fmt in ("wav", "flac"):
            samples, rate = sf.read(io.BytesIO(data), dtype="int16")
            if rate != SR or samples.ndim != 1:
                raise Garbled(f"{fmt}: {rate} Hz, shape {samples.shape}")
            return len(samples), len(samples) / SR
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            n = sum(frame.samples for frame in container.decode(stream))
            rate = stream.codec_context.sample_rate
    except Garbled:
        raise
    except Exception as e:          # any decoder complaint means the bytes are not that format
        raise Garbled(f"{fmt} does not decode: {type(e).__name__}: {e}") from e
    if n == 0:
        raise Garbled(f"{fmt} decodes to no samples")
    return 0, n / rate


def sse_audio(text: str) -> bytes:
    """The audio of an SSE answer: its deltas' bytes, once `speech.audio.done` ended it."""
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1].get("type") != "speech.audio.done":
        raise Garbled(f"SSE stream did not end with speech.audio.done: {events[-1:]!r}"[:300])
    if any(e.get("type") != "speech.audio.delta" for e in events[:-1]):
        raise Garbled("SSE stream holds events other than speech.audio.delta")
    return b"".join(base64.b64decode(e["audio"]) for e in events[:-1])


def check_length(job: Job, frames: int, seconds: float, references: dict) -> None:
    """A greedy answer lasts exactly as long as its reference (lossy codecs: within their padding)."""
    ref = references.get(job.greedy_key)
    if ref is None:
        return
    if job.fmt in LOSSLESS and frames != ref:
        raise Garbled(f"greedy {job.greedy_key}: {frames} samples, reference {ref}")
    if job.fmt not in LOSSLESS and abs(seconds - ref / SR) > CODEC_SLACK_S[job.fmt] + 1e-6:
        raise Garbled(f"greedy {job.greedy_key}: {seconds:.3f} s, reference {ref / SR:.3f} s")


# -- requests ---------------------------------------------------------------------------------

def draw(rng: random.Random, voices: list[str], bad_every: int) -> Job:
    """One request of the mix."""
    voice = rng.choice(voices)
    if bad_every and rng.randrange(bad_every) == 0:
        label, route, body = rng.choice(BAD)
        if isinstance(body, dict):
            body = {k: v.replace("{voice}", voices[0]) if isinstance(v, str) else v for k, v in body.items()}
        return Job(f"bad:{label}", route, body, bad=True)
    text_label = rng.choices(list(TEXT_WEIGHTS), weights=list(TEXT_WEIGHTS.values()))[0]
    text, kind = TEXTS[text_label], rng.random()
    if kind < 0.15:          # the streaming variant: default sampling, one voice
        streaming = rng.random() < 0.5
        route, fmt = ("/index-tts/v1/tts_stream", "pcm") if rng.random() < 0.7 else ("/index-tts/v1/tts", "wav")
        return Job(f"variant:{route.rsplit('/', 1)[1]}", route,
                   {"text": text, "reference_id": voices[0] if "+" in voice else voice, "streaming": streaming},
                   fmt, stream=streaming)
    fmt, sse, greedy = rng.choice(FORMATS), kind < 0.3, rng.random() < 0.5
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": fmt}
    body.update({"temperature": 0} if greedy else {"seed": rng.randrange(2**31)})
    if sse:
        body["stream_format"] = "sse"
    return Job(f"{'sse' if sse else 'speech'}:{fmt}:{'greedy' if greedy else 'sampled'}", "/v1/audio/speech",
               body, fmt, stream=rng.random() < 0.5, sse=sse, greedy_key=(text_label, voice) if greedy else None)


def execute(session: requests.Session, base: str, job: Job, references: dict, timeout: float) -> dict:
    """Send `job`, read and check its answer: {"ok", "status", "seconds", ...}."""
    started = time.perf_counter()
    outcome = {"label": job.label, "ok": False, "status": None, "ttfb_s": None}
    kwargs = {"json": job.body} if isinstance(job.body, dict) else {
        "data": job.body, "headers": {"content-type": "application/json"}}
    try:
        with session.post(base + job.route, stream=True, timeout=timeout, **kwargs) as r:
            outcome["status"] = r.status_code
            parts = []
            for chunk in r.iter_content(chunk_size=None if job.stream else 1 << 20):
                if outcome["ttfb_s"] is None and job.stream:
                    outcome["ttfb_s"] = time.perf_counter() - started
                parts.append(chunk)
            data = b"".join(parts)
    except requests.RequestException as e:
        outcome["status"] = f"error:{type(e).__name__}"
        return outcome
    outcome["seconds"] = time.perf_counter() - started
    if job.bad:
        outcome["ok"], outcome["detail"] = refused(outcome["status"], data)
        return outcome
    if outcome["status"] != 200:
        outcome["detail"] = data[:300].decode("utf-8", "replace")
        return outcome
    try:
        audio = sse_audio(data.decode("utf-8")) if job.sse else data
        frames, seconds = decode(audio, job.fmt)
        check_length(job, frames, seconds, references)
    except (Garbled, UnicodeDecodeError, ValueError, KeyError) as e:
        outcome["detail"] = str(e)[:300]
        return outcome
    outcome.update(ok=True, audio_s=seconds)
    return outcome


def refused(status, data: bytes) -> tuple[bool, str]:
    """A bad request is refused when it gets a 4xx in OpenAI's envelope with a non-null code."""
    if not isinstance(status, int) or not 400 <= status < 500:
        return False, f"status {status}"
    try:
        error = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return False, f"status {status} without the error envelope"
    return bool(error.get("code")), f"status {status} code {error.get('code')}"


def greedy_references(base: str, voices: list[str], timeout: float, workers: int, headers: dict) -> dict:
    """Sample counts of every greedy (text, voice) of the mix, requested once as pcm."""
    keys = [(t, v) for t in TEXTS for v in voices]

    def one(key):
        body = {"model": "tts-1", "input": TEXTS[key[0]], "voice": key[1], "response_format": "pcm",
                "temperature": 0}
        r = requests.post(base + "/v1/audio/speech", json=body, timeout=timeout, headers=headers)
        if r.status_code != 200:
            raise SystemExit(f"reference request {key} failed: {r.status_code} {r.text[:300]}")
        return decode(r.content, "pcm")[0]

    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(keys, pool.map(one, keys)))


# -- memory of the Serve replicas -------------------------------------------------------------

def replica_rss(app: str, within: Optional[int]) -> dict[str, dict]:
    """{pid: {"deployment", "rss_mb"}} of the replica processes of Serve application `app`
    (only descendants of process `within`, when given: the Ray this script started)."""
    procs = psutil.Process(within).children(recursive=True) if within else psutil.process_iter()
    found = {}
    for proc in procs:
        try:
            match = REPLICA.match(" ".join(proc.cmdline()))
            if match and match["app"] == app:
                found[str(proc.pid)] = {"deployment": match["deployment"],
                                        "rss_mb": round(proc.memory_info().rss / 2**20, 1)}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def memory_report(start: dict, end: dict, samples: list) -> dict:
    """Per replica: RSS at start and end and the growth; replicas that appeared or vanished (a
    restarted replica shows as one of each)."""
    replicas = [{"pid": int(pid), "deployment": s["deployment"], "rss_start_mb": s["rss_mb"],
                 "rss_end_mb": end[pid]["rss_mb"], "growth_mb": round(end[pid]["rss_mb"] - s["rss_mb"], 1)}
                for pid, s in sorted(start.items()) if pid in end]
    return {"replicas": replicas,
            "vanished": [{"pid": int(p), **s} for p, s in start.items() if p not in end],
            "appeared": [{"pid": int(p), **s} for p, s in end.items() if p not in start],
            "samples": samples}


# -- the run ----------------------------------------------------------------------------------

def soak(args, base: str, within: Optional[int]) -> dict:
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    mixes = voices + ([f"{voices[0]}+{voices[1]}", f"{voices[0]}:3+{voices[1]}:1"] if len(voices) > 1 else [])
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    references = greedy_references(base, mixes, args.timeout_s, args.concurrency, headers)
    tally, samples = Tally(), []
    rss_start = replica_rss(args.app, within)
    started = time.monotonic()
    deadline = started + args.duration_s

    def worker(k: int) -> None:
        rng, session = random.Random(args.seed * 1000 + k), requests.Session()
        session.headers.update(headers)
        while time.monotonic() < deadline:
            job = draw(rng, mixes, args.bad_every)
            try:
                outcome = execute(session, base, job, references, args.timeout_s)
            except Exception as e:      # a check that broke is counted, not allowed to end the soak
                outcome = {"label": job.label, "ok": False, "status": f"error:{type(e).__name__}",
                           "detail": str(e)[:300]}
            tally.add(job, outcome)

    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(worker, k) for k in range(args.concurrency)]
        while not all(f.done() for f in futures):
            time.sleep(min(args.sample_s, 1.0))
            if time.monotonic() - started >= args.sample_s * (len(samples) + 1):
                samples.append({"t_s": round(time.monotonic() - started, 1),
                                "rss_mb": {p: r["rss_mb"] for p, r in replica_rss(args.app, within).items()}})
        for f in futures:
            f.result()
    elapsed = time.monotonic() - started
    return summarise(args, tally, elapsed, references, memory_report(rss_start, replica_rss(args.app, within),
                                                                      samples))


def summarise(args, tally: Tally, elapsed: float, references: dict, memory: dict) -> dict:
    def quantiles(values: list[float]) -> dict:
        if not values:
            return {}
        ordered = sorted(values)
        return {"median": round(statistics.median(ordered), 3),
                "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
                "max": round(ordered[-1], 3)}

    bad = sum(n for label, n in tally.requests.items() if label.startswith("bad:"))
    valid = sum(tally.requests.values()) - bad
    return {
        "url": args.url, "duration_s": round(elapsed, 1), "concurrency": args.concurrency, "seed": args.seed,
        "requests": sum(tally.requests.values()), "valid_requests": valid, "bad_requests": bad,
        "by_label": dict(sorted(tally.requests.items())),
        "failures": sum(tally.failures.values()), "failures_by_status": dict(tally.failures),
        "garbled": len(tally.garbled), "garbled_examples": tally.garbled[:10],
        "bad_not_refused": len(tally.bad_not_refused), "bad_not_refused_examples": tally.bad_not_refused[:10],
        "requests_per_s": round(sum(tally.requests.values()) / elapsed, 2) if elapsed else None,
        "audio_s": round(tally.audio_s, 1), "request_s": quantiles(tally.seconds),
        "first_byte_s": quantiles(tally.ttfb),
        "greedy_references_samples": {f"{t}|{v}": n for (t, v), n in references.items()},
        "memory": memory,
    }


def print_summary(result: dict) -> None:
    print(f"soak {result['url']}: {result['duration_s']} s at concurrency {result['concurrency']}: "
          f"{result['requests']} requests ({result['valid_requests']} valid, {result['bad_requests']} bad), "
          f"{result['requests_per_s']} req/s, {result['audio_s']} s of audio")
    print(f"  failures among valid requests: {result['failures']} {result['failures_by_status'] or ''}")
    print(f"  garbled audio: {result['garbled']}; bad requests not refused: {result['bad_not_refused']}")
    print(f"  request time: {result['request_s']}; first byte (streamed reads): {result['first_byte_s']}")
    memory = result["memory"]
    for r in memory["replicas"]:
        print(f"  {r['deployment']:<10} pid {r['pid']:<8} RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MiB "
              f"({r['growth_mb']:+.1f})")
    if not memory["replicas"]:
        print("  no replica processes of this app found on this machine (memory not measured)")
    for what in ("vanished", "appeared"):
        if memory[what]:
            print(f"  replicas {what}: {memory[what]}")


# -- a deployment of our own ------------------------------------------------------------------

def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_tiny(app: str) -> tuple[str, Callable[[], None]]:
    """Ray + Serve on a free loopback port with the tiny checkpoint graph over a copy of
    examples/voices; returns (base URL, the function that shuts it all down)."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    voices = Path(tempfile.mkdtemp(prefix="soak-voices-"))
    shutil.copytree(ROOT / "examples" / "voices", voices, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("uploads"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Logical CPUs: the replicas are idle most of the time; one thread each, as in the tests.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})

    def shutdown() -> None:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(voices, ignore_errors=True)

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model_dir": str(ROOT / "tests" / "golden" / "tiny"), "device": "cpu",
                             "gpt_engine": "torch", "voices_dir": str(voices)}), name=app, route_prefix="/soak")
    except BaseException:
        shutdown()
        raise
    return f"http://127.0.0.1:{port}/soak", shutdown


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="base URL of the deployment, route prefix included (ignored with --start-tiny)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a URL that is not loopback (refused by default: a soak is a load test)")
    p.add_argument("--start-tiny", action="store_true",
                   help="start Ray + Serve here with the tiny checkpoint graph, soak it, shut it down")
    p.add_argument("--duration-s", type=float, default=600.0, help="how long to send requests (default 10 min)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at all times (workers)")
    p.add_argument("--voices", default="alice,bob",
                   help="comma-separated voices of the deployment; the first two are also mixed")
    p.add_argument("--bad-every", type=int, default=10,
                   help="one request in N is a bad one that must be refused with a 4xx (0: none)")
    p.add_argument("--app", default=None,
                   help="Serve application whose replica processes' memory is read (default: 'default', "
                        "the name `serve run` gives; with --start-tiny, the one it starts)")
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between replica memory samples")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer <key>' when given")
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.duration_s <= 0 or args.sample_s <= 0:
        p.error("--concurrency, --duration-s and --sample-s must be positive")
    if not args.start_tiny and not args.allow_remote and not is_loopback(args.url):
        p.error(f"{args.url} is not a loopback address; pass --allow-remote to soak a remote deployment")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    shutdown, within = None, None
    if args.start_tiny:
        args.app = args.app or f"soak{os.getpid()}"
        args.url, shutdown = start_tiny(args.app)
        within = os.getpid()           # our Ray's processes only (other Rays may run here too)
    args.app = args.app or "default"
    try:
        result = soak(args, args.url.rstrip("/"), within)
    finally:
        if shutdown:
            shutdown()
    print_summary(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if not (result["failures"] or result["garbled"] or result["bad_not_refused"]) else 1


if __name__ == "__main__":
    sys.exit(main())
