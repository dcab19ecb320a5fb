"""Tables and plots from the committed GPU results (runs anywhere; the plots need matplotlib).

    python bench/report.py            # reads bench/results/*.json, writes bench/results/results.md + *.png

Every number in the Markdown comes from the JSON files next to it (written by bench_decode.py,
bench_e2e.py, bench_http.py and gpu_parity.py on the GPU machine); targets are checked here, so a
missed target reads as missed. Without matplotlib the tables are still written and the PNGs
already in bench/results/ are kept and linked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CODES_PER_SECOND = 23.4375

# Targets for one H100, IndexTTS-1.5 size, and the published figures of
# the single-process vLLM port on an RTX 4090.
TARGET_DECODE_C1 = 1000.0
TARGET_RTF = 0.03
TARGET_TTFA_S = 0.150
TARGET_STREAMS = 300
TARGET_BASELINE_RATIO = 10.0
PUBLISHED = {"rtf": 0.1, "tokens_per_s_per_request": 280.0, "concurrency": 16}
REAL_TIME_P95 = 0.95   # a level "holds" when at least 95% of its streams stay real-time


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def decode_runs() -> dict[str, dict]:
    runs = {}
    for name in ("decode_ours.json", "decode_stock.json", "decode_stock_v1.json"):
        data = load(name)
        for run in (data or {}).get("runs", []):
            runs[run["engine"]] = dict(run, meta=data)
    return runs


def paired_table(name: str) -> list[str]:
    """The paired comparison (bench_decode.py --engine paired): both engines resident, in turn."""
    data = load(name)
    if not data or "summary" not in data.get("paired", {}):
        return [f"No paired results in {name}."]
    pair = data["paired"]
    lines = ["| concurrent | repeats | ours per request | stock per request | ours / stock: median (worst) "
             "| ours aggregate | stock aggregate | ours / stock: median (worst) | within 10% |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in pair["summary"]:
        r, a = row["per_request_tokens_per_s_median"], row["aggregate_decode_tokens_per_s"]
        ok = "yes" if min(r["ratio_median"], a["ratio_median"]) >= 0.9 else "no"
        lines.append(f"| {row['concurrency']} | {row['repeats']} | {fmt(r['ours'])} | {fmt(r['stock'])} | "
                     f"{fmt(r['ratio_median'], 2)} ({fmt(r['ratio_min'], 2)}) | {fmt(a['ours'])} | {fmt(a['stock'])} | "
                     f"{fmt(a['ratio_median'], 2)} ({fmt(a['ratio_min'], 2)}) | {ok} |")
    lines += ["", f"{data.get('device', '')}, {pair['repeats']} repeats per level asked (fewer where the run was "
              f"stopped at its time limit), {data['codes_per_request']} codes per request, medians over the repeats "
              "both engines finished; ratios per repeat. Ours read as stock is (vLLM's own "
              "outputs, our rendered prompt). Aggregate = all codes over the time to the level's last code."]
    return lines


def decode_table(runs: dict[str, dict]) -> list[str]:
    ours, stock = runs.get("indextts-vllm"), runs.get("stock-vllm-gpt2")
    v1 = runs.get("stock-vllm-gpt2-v1-runner")
    if not ours:
        return ["No decode results yet."]
    o, s, s1 = by_level(ours), by_level(stock), by_level(v1)
    lines = ["| concurrent | ours per request | stock GPT-2 per request | ours / stock (per request) "
             "| ours aggregate | stock aggregate | ours / stock (aggregate) | time to first code, ours / stock "
             "| stock on V1 runner, aggregate | GPU memory (ours) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in sorted(o):
        row, ref, ref1 = o[level], s.get(level), s1.get(level)
        ratio = decode_rate(row) / decode_rate(ref) if ref else None
        per_request = (row["per_request_tokens_per_s_median"] / ref["per_request_tokens_per_s_median"]
                       if ref else None)
        ttfc = (f"{fmt(1e3 * row['time_to_first_code_s_median'])} / "
                f"{fmt(ref and 1e3 * ref['time_to_first_code_s_median'])} ms")
        lines.append(f"| {level} | {fmt(row['per_request_tokens_per_s_median'])} | "
                     f"{fmt(ref and ref['per_request_tokens_per_s_median'])} | {fmt(per_request, 2)} | "
                     f"{fmt(row['aggregate_tokens_per_s'])} | {fmt(ref and ref['aggregate_tokens_per_s'])} | "
                     f"{fmt(ratio, 2)} | {ttfc} | "
                     f"{fmt(ref1 and ref1['aggregate_tokens_per_s'])} | {fmt(row['gpu_memory_mib'])} MiB |")
    lines.append("")
    lines.append(f"Tokens per second (one token = one mel code = 1/{CODES_PER_SECOND} s of audio), "
                 f"{ours['meta']['codes_per_request']} codes per request, median over requests for "
                 "'per request'. Start-up: ours " + fmt(ours["startup_s"], 0) + " s" +
                 (f", stock {fmt(stock['startup_s'], 0)} s." if stock else "."))
    return lines


def e2e_table(e2e: dict | None, baseline: dict | None) -> list[str]:
    if not e2e:
        return ["No end-to-end results yet."]
    lines = ["| engine | concurrent | RTF median | RTF p95 | TTFA median | TTFA p95 | no stalls "
             "| audio s per wall s | GPU memory |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, data in (("ours (vLLM, bf16)", e2e), ("baseline (PyTorch, batch 1, fp16)", baseline)):
        for r in (data or {}).get("levels", []):
            lines.append(f"| {name} | {r['concurrency']} | {fmt(r['rtf_median'], 4)} | {fmt(r['rtf_p95'], 4)} | "
                         f"{fmt(1e3 * r['ttfa_median_s'])} ms | {fmt(1e3 * r['ttfa_p95_s'])} ms | "
                         f"{fmt(100 * r['real_time_share'])}% | {fmt(r['audio_s_per_wall_s'], 1)} | "
                         f"{fmt(r['gpu_memory_mib'])} MiB |")
    lines.append("")
    lines.append(f"Each request: {e2e['segments_per_request']} sentences x {e2e['codes_per_segment']} codes = "
                 f"{fmt(e2e['segments_per_request'] * e2e['audio_s_per_segment'], 2)} s of audio, streamed "
                 "per sentence. RTF = request time / audio length. TTFA = time to the first audio chunk. "
                 "'no stalls' = share of streams where no chunk arrived later than the audio before it "
                 "finished playing, counted from the first chunk.")
    return lines


def http_table(http: dict | None) -> list[str]:
    if not http:
        return ["No HTTP results yet."]
    lines = ["| concurrent | TTFA median | TTFA p95 | RTF median | no stalls | audio s per wall s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in http["levels"]:
        lines.append(f"| {r['concurrency']} | {fmt(1e3 * r['ttfa_median_s'])} ms | {fmt(1e3 * r['ttfa_p95_s'])} ms | "
                     f"{fmt(r.get('rtf_median'), 4)} | {fmt(100 * r['real_time_share'])}% | "
                     f"{fmt(r['audio_s_per_wall_s'], 1)} |")
    return lines


def max_real_time(levels: list[dict]) -> int | None:
    """The largest tried level whose streams are real-time at p95: the p95 request finishes
    within its audio's duration (RTF <= 1) and >= 95% of streams never stall after their first
    chunk. (Continuity alone is too weak: with segments generated ahead, a stream that starts 12 s
    late can still be continuous.)"""
    held = [r["concurrency"] for r in levels
            if r["real_time_share"] >= REAL_TIME_P95 and r.get("rtf_p95", float("inf")) <= 1.0]
    return max(held) if held else None


def by_level(data: dict | None) -> dict[int, dict]:
    return {r["concurrency"]: r for r in (data or {}).get("levels", [])}


def paired_levels(paired: dict | None) -> dict[int, dict]:
    """The paired run's summary rows by level ({} without a paired run)."""
    return {r["concurrency"]: r for r in ((paired or {}).get("paired") or {}).get("summary", [])}


def headline(runs: dict, e2e: dict | None, http: dict | None, paired: dict | None = None) -> dict:
    """The numbers both the targets and the published-figures tables quote. Decode at 1 request
    comes from the paired run where it has that level (the current engine), else the single pass."""
    single = by_level(runs.get("indextts-vllm")).get(1, {}).get("per_request_tokens_per_s_median")
    at_1 = paired_levels(paired).get(1)
    return {"c1": at_1["per_request_tokens_per_s_median"]["ours"] if at_1 else single,
            "rtf": by_level(e2e).get(1, {}).get("rtf_median"),
            "ttfa": by_level(http).get(1, {}).get("ttfa_median_s"),
            "streams": max_real_time(e2e["levels"]) if e2e else None}


def decode_rate(row: dict) -> float:
    """Codes over the time to the level's last code where recorded (our engine's wall time also
    holds the latent pass), else over the level's wall time."""
    return row.get("aggregate_decode_tokens_per_s") or row["aggregate_tokens_per_s"]


def decode_vs_stock(runs: dict, paired: dict | None) -> tuple[str, bool] | None:
    """(measured, met) for the decode-vs-stock target: the worst level's per-request ratio median
    of the paired run, else the worst aggregate ratio of the single passes."""
    levels = paired_levels(paired)
    if levels:
        worst = min((r["per_request_tokens_per_s_median"]["ratio_median"], c) for c, r in levels.items())
        return f"{worst[0]:.2f} (worst, at {worst[1]}; paired, per request, levels {', '.join(map(str, levels))})", \
            worst[0] >= 0.9
    ours, stock = by_level(runs.get("indextts-vllm")), by_level(runs.get("stock-vllm-gpt2"))
    if not stock:
        return None
    worst = min((decode_rate(ours[c]) / decode_rate(stock[c]), c) for c in ours if c in stock)
    return f"{worst[0]:.2f} (worst, at {worst[1]}; single passes, aggregate)", worst[0] >= 0.9


def targets(runs: dict, e2e: dict | None, baseline: dict | None, http: dict | None,
            paired: dict | None = None) -> list[str]:
    rows = []

    def add(what: str, target: str, value, ok) -> None:
        rows.append(f"| {what} | {target} | {value} | {'met' if ok else ('missed' if ok is not None else 'not measured')} |")

    h = headline(runs, e2e, http, paired)
    c1, rtf, ttfa, streams = h["c1"], h["rtf"], h["ttfa"], h["streams"]
    add("decode tokens/s, 1 request", f">= {TARGET_DECODE_C1:,.0f}", fmt(c1), None if c1 is None else c1 >= TARGET_DECODE_C1)
    versus = decode_vs_stock(runs, paired)
    if versus:
        add("decode vs stock vLLM GPT-2, every level", ">= 0.90", *versus)
    add("RTF, 1 request", f"<= {TARGET_RTF}", fmt(rtf, 4), None if rtf is None else rtf <= TARGET_RTF)
    add("TTFA through HTTP, 1 request", f"<= {1e3 * TARGET_TTFA_S:.0f} ms", fmt(ttfa and 1e3 * ttfa) + " ms",
        None if ttfa is None else ttfa <= TARGET_TTFA_S)
    add("concurrent real-time streams (p95)", f">= {TARGET_STREAMS}",
        f"{streams} (largest level tried: p95 RTF <= 1, no stalls)" if streams else "-",
        None if streams is None else streams >= TARGET_STREAMS)
    if e2e and baseline:
        best = max(r["audio_s_per_wall_s"] for r in e2e["levels"])
        base = baseline["levels"][0]["audio_s_per_wall_s"]
        add("throughput vs baseline", f">= {TARGET_BASELINE_RATIO:.0f}x", f"{best / base:.1f}x "
            f"({best:.0f} vs {base:.1f} audio s per wall s)", best / base >= TARGET_BASELINE_RATIO)
    return ["| what | target | measured | |", "|---|---|---|---|"] + rows


def published(runs: dict, e2e: dict | None, http: dict | None, paired: dict | None = None) -> list[str]:
    h = headline(runs, e2e, http, paired)
    c1, rtf, streams = h["c1"], h["rtf"], h["streams"]
    return ["| | published (RTX 4090, single-process vLLM port) | ours (H100) | ratio |", "|---|---:|---:|---:|",
            f"| RTF, 1 request | {PUBLISHED['rtf']} | {fmt(rtf, 4)} | "
            f"{fmt(rtf and PUBLISHED['rtf'] / rtf, 1)}x |",
            f"| decode tokens/s per request | {PUBLISHED['tokens_per_s_per_request']:.0f} | {fmt(c1)} | "
            f"{fmt(c1 and c1 / PUBLISHED['tokens_per_s_per_request'], 2)}x |",
            f"| concurrent requests | about {PUBLISHED['concurrency']} | {streams or '-'} real-time | "
            f"{fmt(streams and streams / PUBLISHED['concurrency'], 0)}x |",
            "", "Different GPUs: an H100 has about 3.3x the memory bandwidth of an RTX 4090, which bounds "
            "batch-1 decoding; the ratios are not a like-for-like comparison of software."]


def parity_table(parity: dict | None) -> list[str]:
    if not parity:
        return ["No parity results yet."]
    lines = ["| text tokens | codes | leading codes equal | torch margin at first difference | latents max abs diff "
             "| latents mean abs diff | latents relative L2 |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in parity["runs"]:
        lines.append(f"| {r['text_tokens']} | {r['codes']} | {r['leading_codes_equal']} | "
                     f"{fmt(r['torch_margin_at_first_difference'], 3)} | {r['latents_max_abs_diff']:.3g} | "
                     f"{r['latents_mean_abs_diff']:.3g} | {r['latents_rel_l2']:.3g} |")
    cost = parity.get("latent_pass_seconds_by_codes", {})
    lines += ["", "Latent pass (one segment, in vLLM's worker): " +
              ", ".join(f"{k} codes {1e3 * v:.1f} ms" for k, v in cost.items())]
    return lines


def _save(fig, axes, titles: tuple[str, str], name: str, log_y: bool) -> str:
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent requests")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    return name


def plots(runs: dict, e2e: dict | None, http: dict | None) -> list[str]:
    """decode.png and e2e.png; without matplotlib, the PNGs already there (not redrawn)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: tables written, plots not redrawn", file=sys.stderr)
        return [name for name in ("decode.png", "e2e.png") if (RESULTS / name).exists()]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if runs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for engine, run in sorted(runs.items()):
            xs = [r["concurrency"] for r in run["levels"]]
            axes[0].plot(xs, [r["aggregate_tokens_per_s"] for r in run["levels"]], marker="o", label=engine)
            axes[1].plot(xs, [r["per_request_tokens_per_s_median"] for r in run["levels"]], marker="o", label=engine)
        written.append(_save(fig, axes, ("aggregate decode tokens/s", "per-request decode tokens/s (median)"),
                             "decode.png", log_y=False))
    if e2e:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        xs = [r["concurrency"] for r in e2e["levels"]]
        axes[0].plot(xs, [r["rtf_median"] for r in e2e["levels"]], marker="o", label="RTF median")
        axes[0].plot(xs, [r["rtf_p95"] for r in e2e["levels"]], marker="o", label="RTF p95")
        axes[0].axhline(1.0, color="grey", lw=0.8)
        for name, data, marker in (("in process", e2e, "o"), ("HTTP", http, "s")):
            if data:
                hx = [r["concurrency"] for r in data["levels"]]
                for stat in ("median", "p95"):
                    axes[1].plot(hx, [1e3 * r[f"ttfa_{stat}_s"] for r in data["levels"]], marker=marker,
                                 label=f"{name}, {stat}")
        written.append(_save(fig, axes, ("end-to-end real-time factor", "time to first audio (ms)"),
                             "e2e.png", log_y=True))
    return written


def document(runs: dict, paired: dict | None, e2e: dict | None, baseline: dict | None, http: dict | None,
             parity: dict | None, images: list[str]) -> list[str]:
    """results.md, line by line."""
    gpu = (paired or {}).get("device") or next((r["meta"].get("device") for r in runs.values()), None) \
        or (e2e or {}).get("gpu", "unknown GPU")
    return ["# Benchmark results", "",
            f"Generated by `python bench/report.py` from the JSON files in this folder. GPU: {gpu}; "
            "model: IndexTTS-1.5 size with random weights (`indextts random-checkpoint`), bfloat16. "
            "Earlier runs and what they showed: docs/benchmarks.md.", "",
            "## Targets", ""] + targets(runs, e2e, baseline, http, paired) + [
            "", "## GPT decode: ours vs stock vLLM GPT-2 of the same size, paired", ""] + paired_table("decode_paired.json") + [
            "", "## GPT decode: one pass per engine (separate processes; single runs vary by up to a third)", ""] + decode_table(runs) + [
            "", "## End to end (in process: frontend, conditioning, GPT, latents, vocoder)", ""] + e2e_table(e2e, baseline) + [
            "", "## Through the HTTP API (Ray Serve, streaming pcm)", ""] + http_table(http) + [
            "", "## Against the published figures", ""] + published(runs, e2e, http, paired) + [
            "", "## vLLM engine vs PyTorch engine (bf16, greedy)", ""] + parity_table(parity) + [""] + [
            f"![{name}]({name})" for name in images]


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    runs, paired = decode_runs(), load("decode_paired.json")
    e2e, baseline, http = load("e2e_vllm.json"), load("e2e_baseline.json"), load("http.json")
    images = plots(runs, e2e, http)
    doc = document(runs, paired, e2e, baseline, http, load("gpu_parity.json"), images)
    (RESULTS / "results.md").write_text("\n".join(doc) + "\n")
    print((RESULTS / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
