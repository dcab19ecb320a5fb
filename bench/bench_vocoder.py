"""BigVGAN vocoder speed on its own: latents -> waveform, per dtype, length and batch (GPU).

    python bench/bench_vocoder.py --model-dir build/bench/ckpt-1.5 --out bench/results/raw/vocoder.json

Reports, per case, the GPU time of one call (CUDA-synchronised, median of `--repeats`), the
host time to launch it (unsynchronised: when it is close to the GPU time the call is
launch-bound), and audio seconds per second. `--profile` adds torch.profiler's top kernels for one
59-code call in the first dtype.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import write_json
from indextts.audio import SAMPLE_RATE

HOP = 1024


def time_graph(model, lat, spk, repeats: int) -> dict:
    """One (batch, length) case as a captured graph: host-to-host time of a replay and its
    largest difference from the eager padded-batch call (the same computation)."""
    import torch

    from indextts.vocoder.graphs import VocoderGraphs

    b, n = lat.shape[:2]
    graphs = VocoderGraphs(model, [b], [n])
    started = time.perf_counter()
    graphs.capture()
    capture = time.perf_counter() - started
    items, speaker = list(lat), spk.expand(b, -1, -1)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        out = graphs.run(items, speaker)
        times.append(time.perf_counter() - t0)
    g = statistics.median(times[2:])
    with torch.no_grad():
        eager = model(lat, speaker, torch.full((b,), n, device=lat.device))[:, 0].float().cpu()
    return {"graph_call_s": g, "graph_audio_s_per_s": b * n * HOP / SAMPLE_RATE / g, "graph_capture_s": capture,
            "graph_max_abs_diff": (out - eager).abs().max().item()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16", "float32"])
    p.add_argument("--codes", type=int, nargs="+", default=[59, 234])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--graphs", action="store_true",
                   help="also time each case replayed as a CUDA graph (indextts.vocoder.graphs, latents in and "
                        "samples out on the host included) and its largest difference from the eager call")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()

    import torch

    from indextts.checkpoint import CheckpointInfo, load_vocoder

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    info = CheckpointInfo.from_dir(args.model_dir)
    results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cases": []}
    gen = torch.Generator().manual_seed(0)     # one fixed input for the precision comparison
    probe_lat = torch.randn(1, 234, info.config.gpt.model_dim, generator=gen)
    probe_spk = torch.randn(1, 1, info.config.bigvgan.speaker_embedding_dim, generator=gen)
    probe = {}
    for name in args.dtypes:
        dtype = getattr(torch, name)
        model = load_vocoder(info, args.device, dtype)
        with torch.no_grad():
            probe[name] = model(probe_lat.to(args.device, dtype), probe_spk.to(args.device, dtype))[0, 0].double().cpu()
        spk = torch.randn(1, 1, model.cfg.speaker_embedding_dim, device=args.device, dtype=dtype)
        for n in args.codes:
            for b in args.batches:
                lat = torch.randn(b, n, info.config.gpt.model_dim, device=args.device, dtype=dtype)
                with torch.no_grad():
                    for _ in range(2):
                        model(lat, spk)
                    sync()
                    gpu, host = [], []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        model(lat, spk)
                        t1 = time.perf_counter()
                        sync()
                        gpu.append(time.perf_counter() - t0)
                        host.append(t1 - t0)
                g = statistics.median(gpu)
                row = {"dtype": name, "codes": n, "batch": b, "call_s": g, "launch_s": statistics.median(host),
                       "audio_s_per_s": b * n * HOP / SAMPLE_RATE / g}
                if args.graphs:
                    row.update(time_graph(model, lat, spk, args.repeats))
                print(row, flush=True)
                results["cases"].append(row)
                write_json(args.out, results)
        if args.profile and name == args.dtypes[0]:
            from torch.profiler import ProfilerActivity, profile
            lat = torch.randn(1, 59, info.config.gpt.model_dim, device=args.device, dtype=dtype)
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                model(lat, spk)
                sync()
            table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=20)
            print(table)
            results["profile_59_codes"] = table
            write_json(args.out, results)
        del model
        torch.cuda.empty_cache()
    if "float32" in probe:      # audio SNR of each dtype against float32 (same weights, same 10 s input)
        ref = probe["float32"]
        results["snr_db_vs_float32"] = {
            name: (10 * torch.log10(ref.pow(2).sum() / (wav - ref).pow(2).sum().clamp_min(1e-30))).item()
            for name, wav in probe.items() if name != "float32"}
        print(results["snr_db_vs_float32"], flush=True)
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
