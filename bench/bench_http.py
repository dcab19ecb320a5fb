"""Time to first audio byte through the HTTP API (streaming), and real-time streams, on Ray Serve.

    python bench/bench_http.py --model-dir build/bench/ckpt-1.5 --device cuda --out bench/results/raw/http.json
    # smoke run on a CPU:
    python bench/bench_http.py --model-dir tests/golden/tiny --device cpu --gpt-engine torch \
        --levels 1 2 --segment-codes 20 --out bench/results/raw/http_cpu.json

Starts the Serve graph in this process (`serve_app.app:build_app`'s graph with every segment
forced to `--segment-codes` codes, `forced.build_forced_app`, because random weights rarely stop), then sends `c` concurrent
`POST /v1/audio/speech` requests (`response_format=pcm`, streamed) per level. Per request: time to
the first audio byte, total time, and whether the stream stayed real-time (every byte arrived
before the audio before it had finished playing, counted from the first byte).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import SENTENCE, add_stream_args, level_summary, stream_row, write_json
from forced import build_forced_app

BYTES_PER_SECOND = 24000 * 2      # pcm: 24 kHz, 16-bit mono


async def post_stream(host: str, port: int, path: str, body: dict):
    """POST `body` as JSON over HTTP/1.1 and yield the response body's chunks as they arrive
    (stdlib only: no HTTP client library needed on the GPU machine)."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        status = (await reader.readline()).decode()
        headers = {}
        while (line := (await reader.readline()).decode().strip()):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if " 200 " not in status:
            raise RuntimeError(f"{status.strip()}: {(await reader.read())[:500]!r}")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int((await reader.readline()).split(b";")[0], 16)):
                yield await reader.readexactly(size)
                await reader.readline()
        else:
            while (data := await reader.read(65536)):
                yield data
    finally:
        writer.close()


async def one(url: tuple[str, int, str], body: dict) -> dict:
    start = time.perf_counter()
    arrivals, durations = [], []
    async for data in post_stream(*url, body):
        arrivals.append(time.perf_counter() - start)
        durations.append(len(data) / BYTES_PER_SECOND)
    return stream_row(arrivals, durations)


async def level_run(url: tuple[str, int, str], body: dict, level: int) -> dict:
    start = time.perf_counter()
    rows = await asyncio.gather(*(one(url, body) for _ in range(level)))
    return level_summary(level, time.perf_counter() - start, rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_args(p, levels=[1, 16, 64], gpu_memory_utilization=0.5)
    p.add_argument("--gpt-engine", choices=["vllm", "torch"], default="vllm")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="another build_app argument (repeatable), e.g. vocoder_cuda_graphs=false")
    args = p.parse_args()

    import ray
    from ray import serve


    voices = Path(tempfile.mkdtemp(prefix="bench-voices-"))
    (voices / "ref.wav").write_bytes(Path(args.voice).read_bytes())
    (voices / "speaker.json").write_text(json.dumps({"bench": ["ref.wav"]}))
    # The GPT replicas unpickle bench/forced.py's factory: put bench/ on their import path.
    bench_dir = str(Path(__file__).resolve().parent)
    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [bench_dir, os.environ.get("PYTHONPATH")]))}})
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app_args = {"model_dir": args.model_dir, "device": args.device, "gpt_engine": args.gpt_engine,
                "voices_dir": str(voices),
                "gpu_memory_utilization": args.gpu_memory_utilization}
    if args.chunk_schedule:
        app_args["chunk_schedule"] = args.chunk_schedule
    if args.vocoder_lookahead is not None:
        app_args["vocoder_lookahead"] = args.vocoder_lookahead
    app_args.update(item.split("=", 1) for item in args.app_arg)
    started = time.perf_counter()
    serve.run(build_forced_app(app_args, args.segment_codes), name="bench", route_prefix="/")
    startup = time.perf_counter() - started
    url = ("127.0.0.1", args.port, "/v1/audio/speech")
    from indextts.text import TextFrontend
    sentence_tokens = len(TextFrontend.from_model_dir(args.model_dir).process(SENTENCE).ids)
    body = {"model": "tts-1", "voice": "bench", "input": " ".join([SENTENCE] * args.segments),
            "response_format": "pcm", "seed": 0, "max_tokens_per_segment": sentence_tokens}
    asyncio.run(level_run(url, body, 2))            # warm-up: compiles, caches the voice
    results = {"engine": args.gpt_engine, "device": args.device, "startup_s": startup,
               "segments_per_request": args.segments, "codes_per_segment": args.segment_codes,
               "chunk_schedule": args.chunk_schedule or "default", "vocoder_lookahead": args.vocoder_lookahead,
               "app_args": args.app_arg,
               "levels": []}
    for level in args.levels:
        row = asyncio.run(level_run(url, body, level))
        print(json.dumps(row), flush=True)
        results["levels"].append(row)
        write_json(args.out, results)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
