"""Load generator for any IndexTTS Serve deployment: point it at a URL, get throughput, time to
first audio, real-time factor and errors, per second and overall, as JSON and a summary.

    python bench/load.py --url http://127.0.0.1:8000 --concurrency 16 --duration-s 60 --out load.json
    python bench/load.py --url http://my-cluster:8000 --ramp 1:30 64:60 256:60 --api-key $KEY --out ramp.json

Each worker sends one request after another (`/v1/audio/speech`, pcm or wav so that audio length
is known from the bytes) with a voice and a text drawn from the mix, reads the response as it
streams (or whole with `--no-stream`), and records when the first audio byte came, when the last
did, and whether the stream stayed ahead of playback (real time). Bounded by `--duration-s` (and
`--max-requests`); every request has `--timeout-s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import httpx

SAMPLE_RATE = 24000           # the API's pcm: 16-bit mono at 24 kHz
WAV_HEADER = 44
TEXTS = {
    "short": "Hello there, how are you today?",
    "medium": "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
              "and the clocks were striking thirteen.",
    "long": " ".join(["Streaming speech should start quickly and never fall behind playback."] * 8),
}


@dataclass
class Result:
    started: float               # seconds since the run began
    status: int
    ttfa_s: Optional[float] = None
    total_s: float = 0.0
    audio_s: float = 0.0
    real_time: bool = False
    error: str = ""


@dataclass
class Plan:
    """Concurrency over time: (workers, seconds) steps, run in order."""

    steps: list[tuple[int, float]] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return sum(s for _, s in self.steps)

    def workers_at(self, t: float) -> int:
        for workers, seconds in self.steps:
            if t < seconds:
                return workers
            t -= seconds
        return 0


async def one_request(client: httpx.AsyncClient, args, body: dict, begun: float) -> Result:
    start = time.perf_counter()
    result = Result(started=start - begun, status=0)
    audio, played, real_time, first = 0, 0.0, True, None
    try:
        async with client.stream("POST", "/v1/audio/speech", json=body, timeout=args.timeout_s) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = (await response.aread())[:200].decode("utf-8", "replace")
                return result
            async for data in response.aiter_bytes() if args.stream else _whole(response):
                now = time.perf_counter() - start
                if first is None:
                    first = now
                real_time = real_time and now - first <= played + 1e-3   # this chunk came before the audio ran out
                audio += len(data)
                played = max(0, audio - (WAV_HEADER if args.format == "wav" else 0)) / 2 / SAMPLE_RATE
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        result.error = type(e).__name__
        result.status = result.status or -1
        return result
    result.ttfa_s, result.total_s = first, time.perf_counter() - start
    result.audio_s, result.real_time = played, real_time and played > 0
    return result


async def _whole(response: httpx.Response):
    yield await response.aread()


def request_body(rng: random.Random, args) -> dict:
    body = {"model": "tts-1", "voice": rng.choice(args.voices), "input": TEXTS[rng.choice(args.texts)],
            "response_format": args.format}
    if args.greedy:
        body["temperature"] = 0
    return body


async def run(args) -> list[Result]:
    plan = Plan([(args.concurrency, args.duration_s)] if not args.ramp else args.ramp)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(w for w, _ in plan.steps) + 4)
    results: list[Result] = []
    begun = time.perf_counter()

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(args.seed * 1000 + index)
        while True:
            t = time.perf_counter() - begun
            if t >= plan.duration or (args.max_requests and len(results) >= args.max_requests):
                return
            if index >= plan.workers_at(t):           # not needed at this step of the ramp
                await asyncio.sleep(0.05)
                continue
            results.append(await one_request(client, args, request_body(rng, args), begun))

    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits) as client:
        await asyncio.gather(*(worker(i, client) for i in range(max(w for w, _ in plan.steps))))
    return results


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]   # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def summarise(args, results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.status == 200 and not r.error]
    per_second: dict[int, dict] = defaultdict(lambda: {"requests": 0, "audio_s": 0.0})
    for r in ok:
        second = int(r.started + r.total_s)
        per_second[second]["requests"] += 1
        per_second[second]["audio_s"] += r.audio_s
    return {
        "url": args.url, "wall_s": wall, "requests": len(results), "ok": len(ok),
        "errors_by_status": dict(Counter(r.status for r in results if r.status != 200 or r.error)),
        "audio_s": sum(r.audio_s for r in ok), "audio_s_per_s": sum(r.audio_s for r in ok) / wall if wall else 0,
        "requests_per_s": len(ok) / wall if wall else 0,
        "ttfa_s": percentiles([r.ttfa_s for r in ok if r.ttfa_s is not None]),
        "rtf": percentiles([r.total_s / r.audio_s for r in ok if r.audio_s > 0]),
        "real_time_share": sum(r.real_time for r in ok) / len(ok) if ok else 0.0,
        "per_second": [{"second": s, **v} for s, v in sorted(per_second.items())],
        "plan": args.ramp or [(args.concurrency, args.duration_s)], "stream": args.stream, "format": args.format,
        "results": [asdict(r) for r in results],
    }


def _step(text: str) -> tuple[int, float]:
    workers, _, seconds = text.partition(":")
    try:
        step = int(workers), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a ramp step is WORKERS:SECONDS, got {text!r}") from None
    if step[0] < 1 or step[1] <= 0:
        raise argparse.ArgumentTypeError(f"a ramp step needs >= 1 worker and > 0 seconds, got {text!r}")
    return step


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="base URL of the deployment, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (deployments with api_keys)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (constant load)")
    p.add_argument("--duration-s", type=float, default=60.0, help="how long to run (constant load)")
    p.add_argument("--ramp", type=_step, nargs="+", metavar="WORKERS:SECONDS",
                   help="a ramp instead of constant load: e.g. 1:30 64:60 256:60")
    p.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    p.add_argument("--voices", type=lambda s: s.split(","), default=["alice"],
                   help="comma-separated voice names (or mixes such as alice+bob) to draw from")
    p.add_argument("--texts", type=lambda s: s.split(","), default=["short", "medium", "long"],
                   help=f"comma-separated text lengths to draw from: {', '.join(TEXTS)}")
    p.add_argument("--format", choices=["pcm", "wav"], default="pcm",
                   help="response format (both carry their audio length in their bytes)")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="read each response whole instead of chunk by chunk")
    p.add_argument("--greedy", action="store_true", help="temperature 0 (deterministic audio)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="per-request timeout")
    p.add_argument("--seed", type=int, default=0, help="seed of the voice/text draws")
    p.add_argument("--out", help="write the summary and every request's record here (JSON)")
    args = p.parse_args(argv)
    bad = [t for t in args.texts if t not in TEXTS]
    if bad:
        p.error(f"unknown text length(s) {bad}; choose from {', '.join(TEXTS)}")
    if args.concurrency < 1 or args.duration_s <= 0:
        p.error("--concurrency must be >= 1 and --duration-s > 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(run(args))
    summary = summarise(args, results, time.perf_counter() - started)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    brief = {k: summary[k] for k in ("requests", "ok", "errors_by_status", "audio_s_per_s", "requests_per_s",
                                     "ttfa_s", "rtf", "real_time_share")}
    print(json.dumps(brief, indent=1))
    return 0 if summary["ok"] == summary["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
