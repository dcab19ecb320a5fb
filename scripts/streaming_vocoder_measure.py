"""Measure BigVGAN's reach and chunked-vocoding accuracy/cost on full-size random-weight vocoders
(CPU); the numbers go into docs/streaming_vocoder.md. Usage: python scripts/streaming_vocoder_measure.py [--quick]"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from indextts.config import IndexTTSConfig
from indextts.random_checkpoint import randomize
from indextts.vocoder.bigvgan import BigVGAN
from indextts.vocoder import streaming
from indextts.vocoder.streaming import StreamingVocoder, receptive_field_of, vocode_chunked

WORK = {"act": [0, 0], "up": [0, 0]}   # samples computed inside windows vs samples kept, per leaf type


def _counting(cls, key):
    """Wrap `cls.compute` to count the window work of the leaves that run on windows."""
    inner = cls.compute

    def compute(self, window, a, i0, i1, t0, t1):
        WORK[key][0] += window.shape[-1] * self.rate * window.shape[1]
        WORK[key][1] += (t1 - t0) * window.shape[1]
        return inner(self, window, a, i0, i1, t0, t1)
    cls.compute = compute


_counting(streaming._Act, "act")
_counting(streaming._Up, "up")


def random_vocoder(version: str, seed: int = 0) -> BigVGAN:
    """Full-size vocoder of `version` with random weights (the repo's randomize: N(0, 1/fan_in))."""
    with torch.device("meta"):
        model = BigVGAN(IndexTTSConfig.preset(version).bigvgan)
    model = model.to_empty(device="cpu")
    for name, buf in BigVGAN(IndexTTSConfig.preset(version).bigvgan).named_buffers():
        if name.endswith("filter"):
            model.get_buffer(name).copy_(buf)
    randomize(model.state_dict(), torch.Generator().manual_seed(seed), std=None)
    model.post_load()
    return model.eval()


def reach(model: BigVGAN, frames: int, dtype, nan: bool) -> dict:
    """Perturb the middle latent frame (NaN: structural support; +1: value change) and return how
    far before/after that frame's own samples the output changes, in samples, and energy quantiles."""
    torch.manual_seed(1)
    hop, j = model.hop_length, frames // 2
    m = model.to(dtype)
    lat = torch.randn(1, frames, m.cfg.gpt_dim, dtype=dtype)
    spk = torch.randn(1, 1, m.cfg.speaker_embedding_dim, dtype=dtype)
    with torch.inference_mode():
        base = m(lat, spk)[0, 0]
        lat[0, j] = float("nan") if nan else lat[0, j] + 1.0
        out = m(lat, spk)[0, 0]
    changed = torch.isnan(out) if nan else (out != base)
    idx = torch.nonzero(changed).flatten()
    res = {"before": j * hop - idx.min().item(), "after": idx.max().item() - ((j + 1) * hop - 1)}
    if not nan:
        energy = (out - base).double() ** 2
        pos = (torch.arange(len(out)) // hop - j).abs()
        total = energy.sum().item()
        for tol in (1e-3, 1e-4, 1e-5, 1e-8):
            res[f"frames_for_{tol:g}"] = next(w for w in range(frames) if energy[pos > w].sum().item() <= tol * total)
    return res


def run_stream(model, lat, spk, schedule, lookahead):
    sv = StreamingVocoder(model, lookahead=lookahead)
    state, out, i, k = sv.start(spk), [], 0, 0
    while i < lat.shape[1]:
        n = schedule[min(k, len(schedule) - 1)]
        out.append(sv.feed(state, lat[:, i:i + n]))
        i, k = i + n, k + 1
    out.append(sv.finish(state))
    return torch.cat(out, dim=-1)


def snr_db(ref, got) -> float:
    return 10 * math.log10((ref.double() ** 2).sum().item() / max(((ref - got).double() ** 2).sum().item(), 1e-300))


def accuracy_and_cost(model: BigVGAN, frames: int, schedule: list[int], lookaheads: list) -> dict:
    torch.manual_seed(2)
    lat = torch.randn(1, frames, model.cfg.gpt_dim)
    spk = torch.randn(1, 1, model.cfg.speaker_embedding_dim)
    rf = receptive_field_of(model)
    res = {"frames": frames, "schedule": schedule, "rows": []}
    with torch.inference_mode():
        model(lat[:, :8], spk)   # warm-up
        t = time.perf_counter(); whole = model(lat, spk); res["whole_s"] = time.perf_counter() - t
        whole64 = copy.deepcopy(model).double()(lat.double(), spk.double()).float()
        res["whole_f32_vs_f64_max_abs"] = (whole - whole64).abs().max().item()
        for la in lookaheads:
            for v in WORK.values():
                v[:] = [0, 0]
            t = time.perf_counter(); got = run_stream(model, lat, spk, schedule, la); dt = time.perf_counter() - t
            res["rows"].append({"lookahead": la, "snr_db": snr_db(whole, got),
                                "max_abs": (whole - got).abs().max().item(),
                                "max_abs_vs_f64": (whole64 - got).abs().max().item(), "stream_s": dt,
                                "window_work": {k: v[0] / max(v[1], 1) for k, v in WORK.items()}})
        for la in (22, rf.lookahead):
            t = time.perf_counter()
            got = torch.cat(list(vocode_chunked(model, lat, spk, schedule, lookahead=la, context=la)), -1)
            res[f"window_{la}"] = {"snr_db": snr_db(whole, got), "max_abs": (whole - got).abs().max().item(),
                                   "s": time.perf_counter() - t}
    return res


def timing(frames: int, repeats: int = 3) -> dict:
    """Wall time (best of `repeats`) of whole-segment, stateful and windowed vocoding, schedule 24 then 48."""
    model = random_vocoder("1.5").float()
    torch.manual_seed(2)
    lat, spk = torch.randn(1, frames, model.cfg.gpt_dim), torch.randn(1, 1, model.cfg.speaker_embedding_dim)
    runs = {"whole": lambda: model(lat, spk),
            "stream_exact": lambda: run_stream(model, lat, spk, [24, 48], None),
            "stream_lookahead_22": lambda: run_stream(model, lat, spk, [24, 48], 22),
            "window_34": lambda: list(vocode_chunked(model, lat, spk, [24, 48])),
            "window_22": lambda: list(vocode_chunked(model, lat, spk, [24, 48], lookahead=22, context=22))}
    res = {"frames": frames, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        model(lat[:, :8], spk)
        for name, fn in runs.items():
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
            res[name] = best
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--timing", action="store_true", help="only the wall-time comparison")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.timing:
        print(json.dumps({"timing_1.5": timing(240 if not a.quick else 30)}), flush=True)
        return
    frames = 76 if not a.quick else 8
    out = {}
    for version in ("1.0", "1.5"):
        model = random_vocoder(version)
        rf = receptive_field_of(model)
        out[version] = {"receptive_field": {"before": rf.before, "after": rf.after, "context": rf.context,
                                            "lookahead": rf.lookahead},
                        "nan_probe_f32": reach(model, frames, torch.float32, nan=True),
                        "value_probe_f64": reach(model, frames, torch.float64, nan=False)}
        print(json.dumps({version: out[version]}), flush=True)
    model = random_vocoder("1.5").float()
    rf = receptive_field_of(model)
    sched = [24, 48]
    out["stream_1.5"] = accuracy_and_cost(model, 240 if not a.quick else 30, sched,
                                          [0, 4, 8, 16, 22, rf.lookahead, None])
    print(json.dumps({"stream_1.5": out["stream_1.5"]}), flush=True)


if __name__ == "__main__":
    main()
