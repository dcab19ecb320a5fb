"""vLLM engine vs the PyTorch engine on a full-size checkpoint (GPU, bf16).

    python bench/gpu_parity.py --model-dir build/bench/ckpt-1.5 --out bench/results/raw/gpu_parity.json

Both engines decode the same prompts greedily (repetition penalty 10); we report how many leading
codes agree and, for the codes vLLM produced, how close its latents are to the PyTorch latent pass
over the same codes. With random weights the logits are nearly flat, so bf16 rounding can flip
the argmax once the top-2 margin is within bf16 noise: we record the PyTorch margin at the first
disagreement to show that it is such a tie and not a systematic error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--codes", type=int, default=64)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    return p.parse_args()


def torch_margin(model, cond, ids, v_codes: list[int], t_codes: list[int], agree: int) -> float:
    """The PyTorch engine's penalised score of its own code minus vLLM's code at the first step
    where they differ, given the shared prefix (a tie shows as a margin within bf16 noise)."""
    import torch

    from indextts.gpt.generation import encode_prompt
    from indextts.gpt.sampling import RepetitionPenalty

    prompt = encode_prompt(model, cond.cuda(), ids)
    prefix = v_codes[:agree]
    if prefix:
        cache = prompt.cache.copy(prompt.length + agree)
        pos = torch.arange(2, 2 + agree, device="cuda")
        h = model(model.embed_mel(torch.tensor([prefix], device="cuda"), pos), cache)[0, -1]
        logits = model.logits(h)
    else:
        logits = prompt.start_logits
    seen = torch.unique(torch.tensor([1, 8192] + prefix, device="cuda"))
    scores = RepetitionPenalty(10.0)(logits.float(), seen)
    return float(scores[t_codes[agree]] - scores[v_codes[agree]])


def compare(model, cond, ids, final, options, seconds: float) -> dict:
    """One prompt: vLLM's greedy codes and latents (`final`) against the PyTorch engine's."""
    import torch

    from indextts.gpt.generation import compute_latents, generate_codes

    v_codes = final.codes.tolist()
    with torch.no_grad():
        t_codes = generate_codes(model, cond.cuda(), ids, options, ignore_stop=True).codes_raw.tolist()
        agree = next((k for k, (a, b) in enumerate(zip(v_codes, t_codes)) if a != b), len(v_codes))
        margin = torch_margin(model, cond, ids, v_codes, t_codes, agree) if agree < len(v_codes) else None
        t_lat = compute_latents(model, cond.cuda(), ids, final.codes.cuda()).float().cpu()
    v_lat = final.latents.float()
    diff = (v_lat - t_lat).abs()
    return {"text_tokens": len(ids), "codes": len(v_codes), "leading_codes_equal": agree,
            "torch_margin_at_first_difference": margin,
            "latents_max_abs_diff": float(diff.max()), "latents_mean_abs_diff": float(diff.mean()),
            "latents_rel_l2": float((v_lat - t_lat).norm() / t_lat.norm()),
            "latents_abs_max": float(t_lat.abs().max()), "vllm_request_s": seconds}


def latent_pass_seconds(engine, loop, cond, ids, lengths=(50, 200, 500)) -> dict[int, float]:
    """The latent pass alone, per number of codes: mean of 5 calls after one warm-up call."""

    async def time_latents(n):
        prompt = engine.prompt(cond, ids)
        codes = list(range(100, 100 + n))
        await engine.latents(prompt, codes)
        t0 = time.perf_counter()
        for _ in range(5):
            await engine.latents(prompt, codes)
        return (time.perf_counter() - t0) / 5

    return {n: loop.run_until_complete(time_latents(n)) for n in lengths}


def main() -> int:
    args = parse_args()

    import torch

    from indextts.checkpoint import CheckpointInfo, load_gpt
    from indextts.types import SamplingOptions
    from indextts.vllm.engine import VLLMEngine

    info = CheckpointInfo.from_dir(args.model_dir)
    started = time.perf_counter()
    engine = VLLMEngine.create(info.model_dir, dtype="bfloat16", gpu_memory_utilization=args.gpu_memory_utilization,
                               max_num_seqs=32)
    startup = time.perf_counter() - started
    model = load_gpt(info, "cuda", torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    options = SamplingOptions.deterministic(max_codes=args.codes)   # run to max_codes (ignore_stop)
    rows = []

    async def run_vllm(cond, ids):
        final = None
        t0 = time.perf_counter()
        async for chunk in engine.generate(cond, ids, options, ignore_stop=True):
            if chunk.final:
                final = chunk
        return final, time.perf_counter() - t0

    loop = asyncio.new_event_loop()
    for i in range(args.prompts):
        cond = (torch.randn(1, 32, model.cfg.model_dim, generator=gen) * 0.5).to(torch.bfloat16)
        ids = torch.randint(3, 600, (20 + 15 * i,), generator=gen).tolist()
        final, seconds = loop.run_until_complete(run_vllm(cond, ids))
        rows.append(compare(model, cond, ids, final, options, seconds))
        print(json.dumps(rows[-1]), flush=True)

    latent_cost = latent_pass_seconds(engine, loop, cond, ids)
    result = {"device": torch.cuda.get_device_name(0), "vllm_startup_s": startup, "dtype": "bfloat16",
              "runs": rows, "latent_pass_seconds_by_codes": latent_cost}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
