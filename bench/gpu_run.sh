#!/usr/bin/env bash
# One benchmark phase per call on the GPU machine (each fits the 10-minute call limit):
#   bash bench/gpu_run.sh decode|decode-gc|decode-steps|decode-ours|decode-ours-noapc|decode-ours-8k|decode-stock|decode-stock-v1|e2e|baseline|gpu-tests|vllm-tests|probe|probe-profile|spy|diagnose|vocoder|parity|http
# Results and full logs go to $OUT (default bench/results/raw); the committed copies live in
# bench/results/ and `python bench/report.py` turns them into the table and plots.
set -o pipefail
phase=$1
OUT=${OUT:-bench/results/raw}
mkdir -p "$OUT"
started=$(date +%s)
source bench/gpu_setup.sh
echo "setup took $(( $(date +%s) - started )) s" | tee -a "$OUT/$phase.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
CKPT=/var/tmp/ckpt-1.5
# The GPU machine cannot build the text grammars (no pynini): carry this checkout's .cache
# (`carry: [".cache"]`, a copy of ~/.cache/indextts/text-grammars) for the phases that use text.
if [ -z "${INDEXTTS_CACHE_DIR:-}" ] && [ -d .cache/text-grammars ]; then export INDEXTTS_CACHE_DIR=$PWD/.cache; fi
run() { echo "+ $*" | tee -a "$OUT/$phase.log"; "$@" 2>&1 | tee -a "$OUT/$phase.log" | grep -E '^\{|Error|error|Traceback' ; }
case $phase in
  decode)          run python3 bench/bench_decode.py --engine paired --model-dir $CKPT --out "$OUT/decode_paired.json" ;;
  decode-gc)       export BENCH_GC_DIR=$OUT/gc PYTHONPATH=$PWD/bench/gc_site:$PYTHONPATH; run python3 bench/bench_decode.py --engine paired --levels 64 256 --repeats 2 --model-dir $CKPT --out "$OUT/decode_paired_gc.json"; cat "$OUT"/gc/*.jsonl > "$OUT/gc_all.jsonl"; rm -rf "$OUT/gc" ;;
  decode-steps)    export BENCH_STEP_DIR=$OUT/steps PYTHONPATH=$PWD/bench/step_site:$PYTHONPATH
                   # Stopped at STEPS_LIMIT s (the paired JSON is saved level by level) so that the
                   # step records are still summarised and packed inside the 10-minute call.
                   run timeout ${STEPS_LIMIT:-545} python3 bench/bench_decode.py --engine paired --levels ${LEVELS:-1 8 32 64 256} --repeats ${REPEATS:-9} --codes ${CODES:-500} --model-dir $CKPT --out "$OUT/decode_paired_steps.json"
                   pkill -9 -f 'EngineCore|bench_decode' || true    # engine cores a timeout left behind
                   python3 bench/step_summary.py "$OUT/decode_paired_steps.json" "$OUT/steps" --json "$OUT/step_summary.json" | tee "$OUT/step_summary.txt"
                   tar -C "$OUT" -czf "$OUT/steps.tar.gz" steps && rm -rf "$OUT/steps" ;;
  decode-ours)     run python3 bench/bench_decode.py --engine ours --model-dir $CKPT --out "$OUT/decode_ours.json" ;;
  decode-ours-noapc) run python3 bench/bench_decode.py --engine ours --engine-arg enable_prefix_caching=false --model-dir $CKPT --out "$OUT/decode_ours_noapc.json" ;;
  decode-ours-8k)  run python3 bench/bench_decode.py --engine ours --levels 1 64 256 --engine-arg max_num_batched_tokens=8192 --model-dir $CKPT --out "$OUT/decode_ours_8k.json" ;;
  decode-stock)    run python3 bench/bench_decode.py --engine stock --model-dir $CKPT --out "$OUT/decode_stock.json" ;;
  decode-stock-v1) run python3 bench/bench_decode.py --engine stock-v1 --model-dir $CKPT --out "$OUT/decode_stock_v1.json" ;;
  e2e)             run python3 bench/bench_e2e.py --engine vllm --dtype bfloat16 --model-dir $CKPT --out "$OUT/e2e_vllm.json" ;;
  baseline)        run python3 bench/bench_e2e.py --engine torch --dtype float16 --levels 1 --model-dir $CKPT --out "$OUT/e2e_baseline.json" ;;
  parity)          run python3 bench/gpu_parity.py --model-dir $CKPT --out "$OUT/gpu_parity.json" ;;
  gpu-tests)       run python3 -m pytest -q -m gpu tests/test_vocoder.py tests/test_pipeline.py ;;
  probe)           run python3 bench/probe_admission.py --stock --model-dir $CKPT --out "$OUT/probe.json" ;;
  probe-profile)   run python3 bench/probe_admission.py --levels 1 256 --codes 300 --profile-dir "$OUT" --model-dir $CKPT --out "$OUT/probe_profile.json" ;;
  spy)             run python3 bench/probe_admission.py --final-only --stock --levels 1 256 --codes 800 --py-spy-dir "$OUT" --model-dir $CKPT --out "$OUT/probe_spy.json"; python3 bench/spy_summary.py "$OUT"/spy_*.txt > "$OUT/spy_summary.txt" ;;
  diagnose)        run python3 bench/probe_admission.py --final-only --stock --levels 1 256 --codes 300 --py-spy-dir "$OUT" --torch-profile-dir /var/tmp/trace --model-dir $CKPT --out "$OUT/probe_diagnose.json"
                   python3 bench/spy_summary.py "$OUT"/spy_*.txt > "$OUT/spy_summary.txt"
                   python3 bench/trace_summary.py /var/tmp/trace > "$OUT/trace_summary.txt"
                   for d in /var/tmp/trace/*/; do cp "$d"/profiler_out_0.txt "$OUT/profiler_$(basename "$d").txt" 2>/dev/null; done ;;
  vllm-tests)      run python3 -m pytest -q -m gpu tests/test_vllm_engine.py ;;
  vocoder)         run python3 bench/bench_vocoder.py --profile --model-dir $CKPT --out "$OUT/vocoder.json" ;;
  http)            run python3 bench/bench_http.py --model-dir $CKPT --out "$OUT/http.json" ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac
echo "phase $phase took $(( $(date +%s) - started )) s" | tee -a "$OUT/$phase.log"
