"""GPT decode throughput: our vLLM model vs stock vLLM running a plain GPT-2 of the same size.

    python bench/bench_decode.py --model-dir build/bench/ckpt-1.5 --out bench/results/raw/decode_paired.json

Each level launches `c` concurrent requests of exactly `--codes` codes (random weights rarely
emit the stop code, so the stop is ignored: 500 codes = 21.3 s of audio) with the original's
sampling defaults (top-k 30, top-p 0.8, temperature 1, repetition penalty 10). Per-request
decode rate is (codes - 1) / (time of last code - time of first code); the aggregate rate is
all codes over the wall time of the level (for our engine that includes the latent pass after the
last code, which stock vLLM has no equivalent of), and `aggregate_decode_tokens_per_s` all codes
over the time to the level's last code. GPU memory is read with nvidia-smi.

`--engine paired` (the default, the comparison): both engines resident on the GPU at once (each
with half of `--gpu-memory-utilization`), warmed up, then measured in turn level by level,
`--repeats` times, the order alternating; the summary gives per level each engine's median over
the repeats and the median and worst of the per-repeat ratios. Our engine is read exactly as
stock vLLM is (`indextts-vllm-raw`: our rendered prompt and sampling parameters into
`AsyncLLM.generate`, vLLM's own per-step outputs). Why paired: separate runs of one engine move
by more than the 10% being compared (host-side jitter; each step is a few milliseconds of Python;
figures in docs/benchmarks.md). Both engine cores are pinned to the same two physical cores and
this process to two others (`split_cpus`; `--no-pin` leaves placement to the OS), so the engine
measured never shares a core with the process reading its outputs while the other does not.

`--engine ours|stock|both`: one engine per process, one pass over the levels; `ours` also reads
our engine through `VLLMEngine.generate` (`indextts-vllm`: the chunks the serving stages get, the
latent pass after the last code included in the level's wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import gpu_memory_mib, physical_cores, pin_threads, write_json

from indextts.vllm.engine import batch_size_buckets

LEVELS = (1, 4, 8, 16, 32, 64, 256)


def summarize(level: int, wall: float, per_request: list[tuple[float, float, int]]) -> dict:
    rates = [(n - 1) / (last - first) for first, last, n in per_request if n > 1 and last > first]
    ttft = [first for first, _, _ in per_request]
    total = sum(n for _, _, n in per_request)
    decode_wall = max(last for _, last, _ in per_request)    # last code of the level (latents not included)
    return {"concurrency": level, "wall_s": wall, "codes": total, "aggregate_tokens_per_s": total / wall,
            "decode_wall_s": decode_wall, "aggregate_decode_tokens_per_s": total / decode_wall if decode_wall else None,
            "per_request_tokens_per_s_median": statistics.median(rates) if rates else None,
            "per_request_tokens_per_s_min": min(rates) if rates else None,
            "time_to_first_code_s_median": statistics.median(ttft), "gpu_memory_mib": gpu_memory_mib()}


async def warm_up(submit, most: int) -> None:
    """Runs `n` requests at once for every power of two up to `most`: vLLM compiles kernels on
    first use per batch-size bucket (its top-k/top-p sampler is JIT-compiled per bucket)."""
    for n in batch_size_buckets(most):
        await asyncio.gather(*(_one(submit, time.perf_counter()) for _ in range(n)))


async def _one(submit, start: float) -> tuple[float, float, int]:
    first = last = None
    n = 0
    async for k in submit():
        now = time.perf_counter() - start
        if k and first is None:
            first = now
        if k:
            last = now
        n += k
    return first or 0.0, last or 0.0, n


async def measure(submit, level: int, codes: int) -> dict:
    """`level` requests at once; one summary row."""
    started_at = time.time()
    start = time.perf_counter()
    per_request = await asyncio.gather(*(_one(submit, start) for _ in range(level)))
    row = dict(summarize(level, time.perf_counter() - start, per_request), started_at=started_at, ended_at=time.time())
    assert all(n == codes for _, _, n in per_request), "a request ended early"
    print(json.dumps(row), flush=True)
    return row


async def run_levels(submit, levels, codes: int, on_row=lambda rows: None, warm: bool = True) -> list[dict]:
    """`submit()` is an async generator factory yielding the number of new codes per output."""
    if warm:
        await warm_up(submit, max(levels))
    results = []
    for level in levels:
        results.append(await measure(submit, level, codes))
        on_row(results)
    return results


OURS, OURS_RAW, STOCK = "indextts-vllm", "indextts-vllm-raw", "stock-vllm-gpt2"


@dataclass
class Engine:
    runs: dict              # run name -> async generator factory (number of new codes per output)
    shutdown: object
    startup_s: float
    model_runner: str


def open_ours(model_dir: str, max_seqs: int, codes: int, text_tokens: int, gpu_mem: float,
              engine_args: dict | None = None) -> Engine:
    """Our engine, two ways to read it:
    - OURS_RAW: our rendered prompt and our sampling parameters straight into vLLM's
      `AsyncLLM.generate`, read exactly as the stock engine is read (model and engine alone);
    - OURS: through `VLLMEngine.generate`, chunks as the serving stages get them (adds the
      latent pass after the last code and the chunk handling in this process)."""
    import torch

    from indextts.types import SamplingOptions
    from indextts.vllm.engine import VLLMEngine

    started = time.perf_counter()
    engine = VLLMEngine.create(model_dir, **{"dtype": "bfloat16", "gpu_memory_utilization": gpu_mem,
                                             "max_num_seqs": max_seqs, **(engine_args or {})})
    startup = time.perf_counter() - started
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 32, engine.config.model_dim, generator=gen) * 0.5
    ids = torch.randint(2, 500, (text_tokens,), generator=gen).tolist()
    options = SamplingOptions(max_codes=codes)     # with ignore_stop: exactly `codes` codes
    prompt = engine.prompt(cond, ids)
    counter = iter(range(10**9))

    async def wrapper():
        async for chunk in engine.generate(cond, ids, options, ignore_stop=True):
            yield 0 if chunk.final else len(chunk.codes)

    async def raw():
        async for out in engine.llm.generate(prompt.for_vllm(), engine.sampling_params(options, ignore_stop=True), f"raw-{next(counter)}"):
            yield len(out.outputs[0].token_ids)

    return Engine({OURS_RAW: raw, OURS: wrapper}, engine.shutdown, startup,
                  "v2" if engine.llm.vllm_config.use_v2_model_runner else "v1")


def open_stock(model_dim: int, layers: int, heads: int, max_seqs: int, codes: int, prompt_len: int, gpu_mem: float,
               work_dir: str, v1_runner: bool = False, engine_args: dict | None = None) -> Engine:
    """Stock vLLM on a plain GPT-2 of the same size, prompt of the same length, same sampling."""
    from vllm import AsyncLLMEngine, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    path = stock_checkpoint(model_dim, layers, heads, work_dir)
    started = time.perf_counter()
    # vLLM 0.26.0 runs embeddings prompts on its V1 model runner only; enabling them here puts
    # the stock model on that runner (`--engine stock-v1`): what V1 costs by itself (our engine
    # ran there while its prompts were embeddings inputs).
    llm = AsyncLLMEngine.from_engine_args(stock_engine_args(path, gpu_mem, max_seqs, enable_prompt_embeds=v1_runner,
                                                            **(engine_args or {})))
    startup = time.perf_counter() - started
    prompt = {"prompt_token_ids": [1] * (prompt_len - 1) + [8192]}
    counter = iter(range(10**9))

    async def submit():
        params = SamplingParams(max_tokens=codes, ignore_eos=True, temperature=1.0, top_k=30, top_p=0.8,
                                repetition_penalty=10.0, detokenize=False, output_kind=RequestOutputKind.DELTA)
        async for out in llm.generate(prompt, params, f"stock-{next(counter)}"):
            yield len(out.outputs[0].token_ids)

    return Engine({STOCK + ("-v1-runner" if v1_runner else ""): submit}, llm.shutdown, startup,
                  "v2" if llm.vllm_config.use_v2_model_runner else "v1")


def run_engine(engine: Engine, names, levels, codes: int, save=lambda runs: None) -> list[dict]:
    """One run per name (`engine.runs`) on one engine (warmed up once), then the engine is shut down."""
    runs = [{"engine": name, "startup_s": engine.startup_s, "levels": [], "model_runner": engine.model_runner}
            for name in names]

    async def main():
        for i, (name, run) in enumerate(zip(names, runs)):
            run["levels"] = await run_levels(engine.runs[name], levels, codes,
                                             lambda rows: save(runs[:i] + [dict(run, levels=rows)]), warm=i == 0)
        engine.shutdown()       # on the loop that vLLM's output task runs on

    run_loop(main)
    return runs


def paired(ours: Engine, stock: Engine, levels, codes: int, repeats: int, save=lambda result: None) -> dict:
    """Both engines resident on the GPU at once, measured in turn: for each repeat and level,
    ours (read raw) and stock back to back, which goes first alternating from level to level and
    from repeat to repeat: host-side jitter moves single runs by more than the 10% compared, so
    both engines are measured under the same conditions."""
    result = {"repeats": repeats, "rows": []}
    pair = [(OURS_RAW, ours.runs[OURS_RAW]), (STOCK, stock.runs[STOCK])]

    async def main():
        for _, submit in pair:
            await warm_up(submit, max(levels))
        for r in range(repeats):
            for i, level in enumerate(levels):
                for name, submit in (pair if (r + i) % 2 == 0 else pair[::-1]):
                    result["rows"].append(dict(await measure(submit, level, codes), engine=name, repeat=r))
                    result["summary"] = paired_summary(result["rows"])     # kept current: a run cut short
                    save(result)                                            # still has its summary
        ours.shutdown()
        stock.shutdown()

    run_loop(main)
    return result


def paired_summary(rows: list[dict]) -> list[dict]:
    """Per level: each engine's median over repeats, and the median of the per-repeat ratios."""
    out = []
    for level in sorted({r["concurrency"] for r in rows}):
        at = [r for r in rows if r["concurrency"] == level]
        ours = {r["repeat"]: r for r in at if r["engine"] == OURS_RAW}
        stock = {r["repeat"]: r for r in at if r["engine"] == STOCK}
        both = sorted(set(ours) & set(stock))
        if not both:            # a level one engine has not been measured at yet
            continue
        row = {"concurrency": level, "repeats": len(both)}
        for key in ("per_request_tokens_per_s_median", "aggregate_decode_tokens_per_s", "time_to_first_code_s_median"):
            row[key] = {"ours": statistics.median(ours[i][key] for i in both),
                        "stock": statistics.median(stock[i][key] for i in both),
                        "ratio_median": statistics.median(ours[i][key] / stock[i][key] for i in both),
                        "ratio_min": min(ours[i][key] / stock[i][key] for i in both)}
        out.append(row)
    return out


def split_cpus() -> tuple[set[int], set[int]]:
    """(this process's CPUs, the engine cores' CPUs) for a paired run: two physical cores each
    (hyperthread siblings included), disjoint. Both engine cores get the same CPUs (only one of
    them is busy at a time), so neither lands beside the frontend's busy thread while the other
    does not: unpinned, code the two engines share (vLLM's sampler step) ran at different speeds
    in the two engine cores (docs/benchmarks.md)."""
    cores = physical_cores()
    if len(cores) < 4:
        raise SystemExit(f"pinning needs 4 physical cores, this process may use {len(cores)}; pass --no-pin")
    return cores[0] | cores[1], cores[2] | cores[3]


def run_loop(main):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def stock_engine_args(path: Path, gpu_mem: float, max_seqs: int, **extra):
    """vLLM's engine arguments for the stock GPT-2 (bfloat16, no tokenizer, vLLM's defaults else)."""
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs(model=str(path), skip_tokenizer_init=True, dtype="bfloat16",
                           gpu_memory_utilization=gpu_mem, max_num_seqs=max_seqs, seed=0, **extra)


def stock_checkpoint(model_dim: int, layers: int, heads: int, work_dir: str) -> Path:
    """A plain Hugging Face GPT-2 of IndexTTS's GPT size and code vocabulary, random, bfloat16
    (written once under `work_dir`)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(work_dir) / "gpt2-stock"
    if not (path / "config.json").exists():
        cfg = GPT2Config(vocab_size=8194, n_positions=2048, n_embd=model_dim, n_layer=layers, n_head=heads,
                         bos_token_id=8192, eos_token_id=8193, activation_function="gelu_new")
        torch.manual_seed(0)
        GPT2LMHeadModel(cfg).to(torch.bfloat16).save_pretrained(path)
    return path


WORK_DIR = Path(__file__).resolve().parent.parent / "build" / "bench"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="an IndexTTS checkpoint (e.g. from `indextts random-checkpoint`)")
    p.add_argument("--out", required=True)
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--codes", type=int, default=500)
    p.add_argument("--text-tokens", type=int, default=60)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    p.add_argument("--work-dir", default=str(WORK_DIR),
                   help="where the stock GPT-2 checkpoint is written once, and --engine both's per-engine "
                        "results (default: build/bench in this checkout)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument for the engine(s) run, VALUE as JSON "
                        "(e.g. max_num_batched_tokens=8192); repeatable")
    p.add_argument("--repeats", type=int, default=3, help="repeats per level (--engine paired)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="--engine paired: leave CPU placement to the OS (by default both engine cores "
                        "share two physical cores and this process gets two others; see split_cpus)")
    p.add_argument("--engine", choices=["paired", "both", "ours", "ours-raw", "stock", "stock-v1"], default="paired",
                   help="paired = both engines resident at once, measured in turn, --repeats times (the "
                        "comparison); both = ours then stock, each in its own process; ours = our engine read as stock "
                        "is (vLLM's own outputs: indextts-vllm-raw), then through VLLMEngine.generate "
                        "(indextts-vllm); ours-raw = the first only; stock-v1 = stock GPT-2 on vLLM's V1 "
                        "model runner (the one embeddings prompts need)")
    args = p.parse_args()
    args.extra = engine_args(p, args.engine_arg)
    return args


def engine_args(p: argparse.ArgumentParser, items: list[str]) -> dict:
    """`--engine-arg KEY=VALUE` items as a dict, VALUE read as JSON where it parses."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--engine-arg takes KEY=VALUE, got {item!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def run_paired(args, cfg, results: dict, prompt_len: int) -> None:
    """`--engine paired`: both engines resident (half the memory share each), CPUs split."""
    share = args.gpu_memory_utilization / 2
    most = max(args.levels)
    frontend_cpus, engine_cpus = split_cpus() if args.pin else (None, None)
    if engine_cpus:
        pin_threads(engine_cpus)        # the engine cores spawned next inherit it
    results["cpus"] = {"frontend": sorted(frontend_cpus or []), "engines": sorted(engine_cpus or [])}
    ours = open_ours(args.model_dir, most, args.codes, args.text_tokens, share, args.extra)
    stock = open_stock(cfg.model_dim, cfg.layers, cfg.heads, most, args.codes, prompt_len, share, args.work_dir,
                       engine_args=args.extra)
    if frontend_cpus:
        pin_threads(frontend_cpus)
    results.update(startup_s={OURS: ours.startup_s, STOCK: stock.startup_s},
                   model_runner={OURS: ours.model_runner, STOCK: stock.model_runner})
    results["paired"] = paired(ours, stock, args.levels, args.codes, args.repeats,
                               lambda part: write_json(args.out, dict(results, paired=part)))


def run_single(args, cfg, results: dict, prompt_len: int) -> None:
    """`--engine ours|ours-raw|stock|stock-v1`: one engine in this process, one pass over the levels;
    `both`: `ours` then `stock`, each in a child process."""
    most = max(args.levels)

    def save(runs: list[dict]) -> None:
        write_json(args.out, dict(results, runs=runs))

    if args.engine in ("ours", "ours-raw"):
        ours = open_ours(args.model_dir, most, args.codes, args.text_tokens, args.gpu_memory_utilization, args.extra)
        results["runs"] += run_engine(ours, [OURS_RAW] if args.engine == "ours-raw" else [OURS_RAW, OURS],
                                      args.levels, args.codes, save)
    elif args.engine in ("stock", "stock-v1"):
        stock = open_stock(cfg.model_dim, cfg.layers, cfg.heads, most, args.codes, prompt_len,
                           args.gpu_memory_utilization, args.work_dir, v1_runner=args.engine == "stock-v1",
                           engine_args=args.extra)
        results["runs"] += run_engine(stock, list(stock.runs), args.levels, args.codes, save)
    else:
        for engine in ("ours", "stock"):
            part = Path(args.work_dir) / f"decode-{engine}.json"
            cmd = [sys.executable, __file__, "--engine", engine, "--out", str(part)] + [
                a for a in sys.argv[1:] if a not in ("--out", args.out, "--engine", "both")]
            subprocess.run(cmd, check=True)
            results["runs"] += json.loads(part.read_text())["runs"]


def main() -> int:
    args = parse_args()

    from indextts.config import IndexTTSConfig
    cfg = IndexTTSConfig.from_yaml(Path(args.model_dir) / "config.yaml").gpt
    results = {"codes_per_request": args.codes, "audio_seconds_per_request": args.codes / 23.4375,
               "text_tokens": args.text_tokens, "model": {"layers": cfg.layers, "model_dim": cfg.model_dim,
                                                          "heads": cfg.heads}, "runs": []}
    try:
        import torch
        results["device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational only
        results["device"] = "unknown"
    results["engine_args"] = args.extra
    prompt_len = 32 + args.text_tokens + 2 + 1
    (run_paired if args.engine == "paired" else run_single)(args, cfg, results, prompt_len)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
