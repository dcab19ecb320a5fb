"""End-to-end synthesis: text in, audio out (frontend + conditioning + GPT + latents + vocoder).

    # ours (vLLM engine), 1.5 size, ~10 s utterances at each of the default --levels:
    python bench/bench_e2e.py --model-dir build/bench/ckpt-1.5 --device cuda --engine vllm \
        --out bench/results/raw/e2e_vllm.json
    # the original project's approach (PyTorch KV-cache decoding, batch 1, fp16, latent pass, BigVGAN):
    python bench/bench_e2e.py --model-dir build/bench/ckpt-1.5 --device cuda --engine torch --dtype float16 \
        --levels 1 --out bench/results/raw/e2e_baseline.json
    # smoke run on a CPU with the tiny checkpoint:
    python bench/bench_e2e.py --model-dir tests/golden/tiny --device cpu --engine torch --levels 1 2 \
        --segment-codes 20 --out bench/results/raw/e2e_cpu.json

Random weights rarely emit the stop code, so every segment is forced to `--segment-codes` codes
(4 segments of 59 codes = 10.07 s of audio at 23.4375 codes/s). Each request speaks `--segments`
sentences, one segment each, so streaming behaviour is visible; requests cycle through five
segment lengths within +-20% of that (`--length-jitter`), since equal lengths would let the
vocoder batch more than real traffic does. Per request we record the time to the first
audio (first segment vocoded), the total time and the real-time factor (total time / audio
length); a stream is *real-time* when no chunk arrives later than the audio before it takes to
play from the first chunk on. Per level: medians, p95s, the share of real-time streams, aggregate
audio seconds per wall second and peak GPU memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from common import SENTENCE, add_stream_args, level_summary, stream_row, write_json
from forced import run_to_max_codes

async def one_request(tts, text: str, voice, options, max_tokens: int, schedule=None) -> dict:
    start = time.perf_counter()
    arrivals, durations = [], []
    async for chunk in tts.synthesizer.stream(text, voice, options, max_tokens, schedule):
        arrivals.append(time.perf_counter() - start)
        durations.append(chunk.samples.numel() / chunk.sample_rate)
    return stream_row(arrivals, durations)


async def run_level(tts, level: int, text: str, voice, options, max_tokens: int, schedule=None) -> tuple[float, list]:
    """(wall seconds, per-request rows) of `level` concurrent requests."""
    start = time.perf_counter()
    rows = await asyncio.gather(*(one_request(tts, text, voice, options[i % len(options)], max_tokens, schedule)
                                  for i in range(level)))
    return time.perf_counter() - start, rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_args(p, levels=[1, 8, 16, 24, 32, 64, 256], gpu_memory_utilization=0.6)
    p.add_argument("--engine", choices=["torch", "vllm"], default="vllm")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument("--enforce-eager", action="store_true",
                   help="vLLM without torch.compile and CUDA graphs: a start in seconds, slower steps")
    p.add_argument("--length-jitter", type=float, default=0.2,
                   help="requests' segment lengths spread over +-this share of --segment-codes (0: all equal)")
    p.add_argument("--ab-schedules", nargs="+", default=None, metavar="SCHEDULE",
                   help="compare chunk schedules on one engine (e.g. default whole default:graphs): every level "
                        "runs once per schedule, interleaved, --repeats times; rows carry their schedule; "
                        "':graphs' runs that arm with the vocoder's CUDA graphs (captured at start)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each level (per schedule), rows pooled")
    p.add_argument("--mixed-length-batches", action="store_true",
                   help="let the vocoder batch segments of different lengths (see VocoderEngineStage)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch

    from indextts.pipeline import IndexTTS
    from indextts.stages.builder import StageOptions
    from indextts.types import ChunkSchedule, SamplingOptions

    dtype = getattr(torch, args.dtype) if args.dtype else None
    extra = {"max_num_seqs": args.max_num_seqs, "enforce_eager": args.enforce_eager} if args.engine == "vllm" else {}
    started = time.perf_counter()
    arms = args.ab_schedules or [args.chunk_schedule or "default"]
    with_graphs = any(arm.endswith(":graphs") for arm in arms) and args.device.startswith("cuda")
    tts = IndexTTS.from_pretrained(args.model_dir, options=StageOptions(
        device=args.device, dtype=dtype, engine=args.engine, gpu_memory_utilization=args.gpu_memory_utilization,
        engine_kwargs=extra, vocoder_cuda_graphs=with_graphs))
    startup = time.perf_counter() - started
    tts.vocoder.mixed_length_batches = args.mixed_length_batches
    tts.vocoder.lookahead = args.vocoder_lookahead
    default = tts.gpt.engine.schedule
    # (label, schedule) pairs; 'default' is the engine's own schedule
    schedules = [(arm, default if arm.split(":")[0] == "default" else ChunkSchedule.parse(arm.split(":")[0]))
                 for arm in arms]
    graphs = tts.vocoder.graphs

    def arm_run(level: int, name: str, sched) -> tuple[float, list]:
        tts.vocoder.graphs = graphs if name.endswith(":graphs") else None
        return tts.run(run_level(tts, level, text, voice, options, segment_tokens, sched))
    voice = tts.voice(args.voice)
    text = " ".join([SENTENCE] * args.segments)
    # Real segments differ in length, which decides how the vocoder can batch them: requests cycle
    # through lengths spread evenly over +-jitter around --segment-codes (mean unchanged).
    spread = [round(args.segment_codes * (1 + args.length_jitter * (2 * k / 4 - 1))) for k in range(5)]
    run_to_max_codes(tts.gpt)       # random weights rarely stop: each request runs to its max_codes
    options = [SamplingOptions(max_codes=n, seed=0) for n in spread]
    max_tokens = tts.info.config.gpt.max_text_tokens
    segment_tokens = len(tts.frontend.process_sync(SENTENCE, max_tokens).ids)
    for name, sched in schedules:    # warm-up (compiles, caches voice)
        arm_run(2, name, sched)
    results = {"engine": args.engine, "device": args.device, "dtype": str(tts.vocoder.dtype),
               "startup_s": startup, "segments_per_request": args.segments,
               "vocoder_graphs_captured": graphs.captured if graphs is not None else 0,
               "vocoder_mixed_length_batches": args.mixed_length_batches,
               "chunk_schedule": [str(sched) for _, sched in schedules] if args.ab_schedules else str(schedules[0][1]),
               "vocoder_lookahead": args.vocoder_lookahead,
               "codes_per_segment_spread": spread,
               "codes_per_segment": args.segment_codes,
               "audio_s_per_segment": args.segment_codes * 1024 / 24000, "levels": []}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    for level in args.levels:
        pooled: dict[str, list[tuple[float, list]]] = {name: [] for name, _ in schedules}
        for _ in range(args.repeats):
            for name, sched in schedules:
                pooled[name].append(arm_run(level, name, sched))
        for name, sched in schedules:
            runs = pooled[name]      # repeats pooled: walls added, requests together
            row = level_summary(level, sum(w for w, _ in runs), [req for _, reqs in runs for req in reqs])
            row["repeats"] = len(runs)
            if args.ab_schedules:
                row["chunk_schedule"], row["vocoder_graphs"] = str(sched), graphs is not None and name.endswith(":graphs")
            print(json.dumps(row), flush=True)
            results["levels"].append(row)
        write_json(args.out, results)
    tts.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
