"""Where a request's time to first code goes, per stage, at a few concurrency levels.

    python bench/probe_admission.py --model-dir /var/tmp/ckpt-1.5 --out probe.json

For each level, `c` requests go in at once, three ways: through `VLLMEngine.generate` (our
wrapper), straight into `AsyncLLM.generate` with the same rendered prompt (no wrapper), and
(with --stock) a plain GPT-2 of the same size. Per request it records, on one clock
(`time.monotonic`, which vLLM's engine core also uses): when the call was made, when vLLM
queued and first scheduled it, when the engine core made its first token and when the caller
saw it, and the gaps between successive outputs. Diagnostic only; bench_decode.py is the
benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import subprocess
import sys
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from common import write_json

from indextts.vllm.engine import batch_size_buckets

# The GPU machine's bundle keeps no console scripts: carry py-spy's binary there in .tools/
# (`unzip -j py_spy-*.whl '*/scripts/py-spy' -d .tools`, then `carry: [".tools"]`).
TOOLS = Path(__file__).resolve().parent.parent / ".tools"


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows: list[dict]) -> dict:
    keys = ("call_to_queued", "queued_to_scheduled", "scheduled_to_first_token", "first_token_to_caller",
            "call_to_caller_first", "step_gap_median_ms")
    return {k: {"median": _median([r.get(k) for r in rows]), "max": max((r.get(k) or 0) for r in rows)}
            for k in keys}


async def one(generate) -> dict:
    call = time.monotonic()
    first_seen = None
    gaps, last = [], None
    metrics = None
    async for out in generate():
        now = time.monotonic()
        if out.outputs and out.outputs[0].token_ids:
            if first_seen is None:
                first_seen = now
            elif last is not None:
                gaps.append(now - last)
            last = now
        metrics = getattr(out, "metrics", None) or metrics
    row = {"call_to_caller_first": (first_seen - call) if first_seen else None,
           "step_gap_median_ms": 1e3 * statistics.median(gaps) if gaps else None}
    if metrics is not None and getattr(metrics, "queued_ts", 0):
        row.update(call_to_queued=metrics.queued_ts - call, queued_to_scheduled=metrics.scheduled_ts - metrics.queued_ts,
                   scheduled_to_first_token=metrics.first_token_ts - metrics.scheduled_ts,
                   first_token_to_caller=(first_seen - metrics.first_token_ts) if first_seen else None)
    return row


async def levels_of(generate, levels, profile_to: str | None = None,
                    spy_to: str | None = None, traced=None) -> list[dict]:
    """`traced`: an AsyncLLM built with `torch_profiler_config` whose profiler runs during the
    largest level (it starts and stops itself by engine step count)."""
    for n in batch_size_buckets(max(levels)):      # warm-up, as bench_decode.py
        await asyncio.gather(*(one(generate) for _ in range(n)))
    out = []
    for level in levels:
        prof = None
        if profile_to and level == max(levels):
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        spy = None
        if spy_to:
            # Sampled Python stacks of this process and vLLM's (engine core, workers), collapsed
            # ("raw") format: where the engine core's step time goes, per function.
            exe = shutil.which("py-spy") or str(TOOLS / "py-spy")
            spy = subprocess.Popen([exe, "record", "--pid", str(os.getpid()), "--subprocesses",
                                    "--nonblocking", "--rate", "250", "--format", "raw", "-o", spy_to.format(level=level)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            time.sleep(1.0)     # py-spy attaches
        if traced is not None and level == max(levels):
            await traced.start_profile()
        gc_before = [s["collections"] for s in gc.get_stats()]
        cpu = time.process_time()
        start = time.monotonic()
        rows = await asyncio.gather(*(one(generate) for _ in range(level)))
        summary = {"concurrency": level, "wall_s": time.monotonic() - start,
                   "frontend_cpu_s": time.process_time() - cpu,
                   "gc_collections": [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before)],
                   **summarize(rows)}
        if traced is not None and level == max(levels):
            await traced.stop_profile()
        if spy is not None:
            spy.send_signal(signal.SIGINT)     # py-spy writes its file when interrupted
            spy.wait(timeout=60)
        if prof is not None:
            import io
            import pstats
            prof.disable()
            text = io.StringIO()
            stats = pstats.Stats(prof, stream=text)
            stats.sort_stats("tottime").print_stats(35)
            stats.sort_stats("cumulative").print_stats(35)
            Path(profile_to).write_text(text.getvalue())
        print(json.dumps(summary), flush=True)
        out.append(summary)
    return out


def torch_profiler_config(directory: str) -> dict:
    """vLLM's torch profiler on the engine core: 30 steps from the 100th after start_profile
    (steady decode at 300 codes), no Python stacks (they slow the step), no frontend trace."""
    return {"profiler": "torch", "torch_profiler_dir": directory, "torch_profiler_with_stack": False,
            "ignore_frontend": True, "delay_iterations": 100, "max_iterations": 30}


def _as_output(chunk) -> SimpleNamespace:
    """One of our wrapper's chunks, shaped like a RequestOutput for `one` (no vLLM metrics)."""
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=[] if chunk.final else chunk.codes.tolist())])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--codes", type=int, default=200)
    p.add_argument("--stock", action="store_true")
    p.add_argument("--final-only", action="store_true",
                   help="vLLM returns each request's output once, at its end (engine speed without per-step output "
                        "handling); the wrapper is skipped")
    p.add_argument("--py-spy-dir", help="py-spy the frontend and vLLM's processes at each level (spy_<engine>_<level>.txt) "
                   "(py-spy on PATH or in .tools/)")
    p.add_argument("--torch-profile-dir", help="vLLM's torch profiler (GPU kernels and CPU ops of the engine core) "
                   "over steps 100-130 of the largest level, one folder per engine, summarised by trace_summary.py")
    p.add_argument("--profile-dir", help="cProfile the frontend at the largest level, one file per path")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    args = p.parse_args()

    import torch
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from indextts.types import SamplingOptions
    from indextts.vllm.engine import VLLMEngine

    result = {"codes": args.codes, "runs": {}}
    counter = iter(range(10**9))

    def params():
        return SamplingParams(max_tokens=args.codes, ignore_eos=True, temperature=1.0, top_k=30, top_p=0.8,
                              repetition_penalty=10.0, detokenize=False,
                              output_kind=RequestOutputKind.FINAL_ONLY if args.final_only else RequestOutputKind.DELTA)

    def profiler(name: str) -> dict:
        if not args.torch_profile_dir:
            return {}
        from vllm.config import ProfilerConfig

        return {"profiler_config": ProfilerConfig(**torch_profiler_config(f"{os.path.abspath(args.torch_profile_dir)}/{name}"))}

    engine = VLLMEngine.create(args.model_dir, dtype="bfloat16", gpu_memory_utilization=args.gpu_memory_utilization,
                               max_num_seqs=max(args.levels), **profiler("ours"))
    traced = engine.llm if args.torch_profile_dir else None
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 32, engine.config.model_dim, generator=gen) * 0.5
    ids = torch.randint(2, 500, (60,), generator=gen).tolist()
    prompt = engine.prompt(cond, ids)
    options = SamplingOptions(max_codes=args.codes, ignore_stop=True)

    def raw():
        return engine.llm.generate(prompt.for_vllm(), params(), f"raw-{next(counter)}")

    async def wrapped():
        async for chunk in engine.generate(cond, ids, options):
            yield _as_output(chunk)

    async def ours():
        prof = (lambda name: f"{args.profile_dir}/{name}.txt") if args.profile_dir else (lambda name: None)
        spy = (lambda name: f"{args.py_spy_dir}/spy_{name}_{{level}}.txt") if args.py_spy_dir else (lambda name: None)
        result["runs"]["ours_raw"] = await levels_of(raw, args.levels, prof("ours_raw"), spy("ours_raw"), traced)
        if not args.final_only:
            result["runs"]["ours_wrapper"] = await levels_of(wrapped, args.levels, prof("ours_wrapper"))
        engine.shutdown()
    asyncio.new_event_loop().run_until_complete(ours())
    write_json(args.out, result)

    if args.stock:
        from bench_decode import stock_checkpoint, stock_engine_args
        from vllm import AsyncLLMEngine

        c = engine.config
        path = stock_checkpoint(c.model_dim, c.layers, c.heads, "/var/tmp")
        llm = AsyncLLMEngine.from_engine_args(stock_engine_args(path, args.gpu_memory_utilization, max(args.levels),
                                                                **profiler("stock")))
        stock_prompt = {"prompt_token_ids": [1] * prompt.length + [8192]}

        def stock():
            return llm.generate(stock_prompt, params(), f"stock-{next(counter)}")

        async def run_stock():
            result["runs"]["stock"] = await levels_of(stock, args.levels,
                                                      spy_to=f"{args.py_spy_dir}/spy_stock_{{level}}.txt" if args.py_spy_dir else None,
                                                      traced=llm if args.torch_profile_dir else None)
            llm.shutdown()
        asyncio.new_event_loop().run_until_complete(run_stock())
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
