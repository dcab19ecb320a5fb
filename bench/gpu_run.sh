#!/usr/bin/env bash
# One benchmark phase per invocation on a GPU machine, run from the checkout (each under 10 minutes):
#   bash bench/gpu_run.sh decode|decode-ours|decode-stock|decode-stock-v1|e2e|baseline|http|vocoder|parity|gpu-tests|vllm-tests
#   bash bench/gpu_run.sh graphs|e2e-ab|http-ab    (the chunked path against the previous one, same lease;
#                                                   HTTP_ARMS="default whole" picks http-ab's arms)
#   bash bench/gpu_run.sh cuda-golden              (which setting moves CUDA fp32 output off the golden waveform)
#   bash bench/gpu_run.sh --help
# Environment:
#   OUT        where results and full logs go (default: bench/results/raw); the committed copies live
#              in bench/results/ and `python bench/report.py` turns them into the tables and plots
#   BENCH_DIR, BENCH_ENV   see bench/gpu_setup.sh (random checkpoint and stock GPT-2 under BENCH_DIR)
#   INDEXTTS_CACHE_DIR     built text grammars; default: the checkout's .cache when it holds
#              text-grammars (a machine without pynini cannot build them: copy a built
#              ~/.cache/indextts/text-grammars there first; the e2e, baseline and http phases need them)
set -o pipefail
phase=${1:-}
if [ -z "$phase" ] || [ "$phase" = -h ] || [ "$phase" = --help ]; then
  sed -n '2,/^set -o/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0
fi
PHASES=" decode decode-ours decode-stock decode-stock-v1 e2e baseline http vocoder parity gpu-tests vllm-tests graphs e2e-ab http-ab cuda-golden "
if [[ "$PHASES" != *" $phase "* ]]; then echo "unknown phase $phase (bash bench/gpu_run.sh --help)"; exit 2; fi
OUT=${OUT:-bench/results/raw}
mkdir -p "$OUT"
started=$(date +%s)
source bench/gpu_setup.sh
echo "setup took $(( $(date +%s) - started )) s" | tee -a "$OUT/$phase.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv"
if [ -z "${INDEXTTS_CACHE_DIR:-}" ] && [ -d .cache/text-grammars ]; then export INDEXTTS_CACHE_DIR=$PWD/.cache; fi
run() { echo "+ $*" | tee -a "$OUT/$phase.log"; "$@" 2>&1 | tee -a "$OUT/$phase.log" | grep -E '^\{|Error|error|Traceback' ; }
# Every 5 s: each GPU process's memory with its Ray actor name (the per-replica sizing figures).
sample_gpu_memory() {
  while sleep 5; do
    echo "# $(date +%s)"
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | while IFS=', ' read -r pid mem unit; do
      echo "$pid $mem $unit $(ps -o args= -p "$pid" | cut -c1-80)"
    done
  done
}
# Serve's logs of the run that just ended (per-replica request timings), compressed.
keep_serve_logs() { tar czf "$OUT/serve-logs-$1.tgz" -C /tmp/ray/session_latest/logs . 2>/dev/null || true; }
DECODE="bench/bench_decode.py --model-dir $CKPT --work-dir $BENCH_DIR"
case $phase in
  decode)          run python3 $DECODE --engine paired --out "$OUT/decode_paired.json" ;;
  decode-ours)     run python3 $DECODE --engine ours --out "$OUT/decode_ours.json" ;;
  decode-stock)    run python3 $DECODE --engine stock --out "$OUT/decode_stock.json" ;;
  decode-stock-v1) run python3 $DECODE --engine stock-v1 --out "$OUT/decode_stock_v1.json" ;;
  e2e)             run python3 bench/bench_e2e.py --engine vllm --dtype bfloat16 --model-dir $CKPT --out "$OUT/e2e_vllm.json" ;;
  baseline)        run python3 bench/bench_e2e.py --engine torch --dtype float16 --levels 1 --model-dir $CKPT --out "$OUT/e2e_baseline.json" ;;
  http)            run python3 bench/bench_http.py --model-dir $CKPT --out "$OUT/http.json" ;;
  vocoder)         run python3 bench/bench_vocoder.py --profile --model-dir $CKPT --out "$OUT/vocoder.json" ;;
  parity)          run python3 bench/gpu_parity.py --model-dir $CKPT --out "$OUT/gpu_parity.json" ;;
  gpu-tests)       run python3 -m pytest -q -m gpu tests/test_vocoder.py tests/test_pipeline.py ;;
  vllm-tests)      run python3 -m pytest -q -m gpu tests/test_vllm_engine.py ;;
  graphs)          run python3 -m pytest -q -m gpu tests/test_vocoder.py tests/test_pipeline.py
                   run python3 bench/bench_vocoder.py --graphs --model-dir $CKPT --dtypes bfloat16 float32 \
                       --codes 74 92 116 164 --batches 1 8 32 64 --repeats 5 --out "$OUT/vocoder_graphs.json" ;;
  cuda-golden)     run python3 bench/cuda_golden_check.py --out "$OUT/cuda_golden.json" ;;
  e2e-ab)          run python3 bench/bench_e2e.py --engine vllm --dtype bfloat16 --model-dir $CKPT --levels 1 16 64 \
                       --ab-schedules default whole --repeats 2 --out "$OUT/e2e_ab.json" ;;
  http-ab)         sample_gpu_memory > "$OUT/gpu_memory.log" & sampler=$!
                   for arm in ${HTTP_ARMS:-default whole}; do
                     sched=(); [ "$arm" = whole ] && sched=(--chunk-schedule whole)
                     run python3 bench/bench_http.py --model-dir $CKPT --levels 1 16 64 "${sched[@]}" \
                         --out "$OUT/http_$arm.json"
                     keep_serve_logs $arm
                   done
                   kill $sampler ;;
esac
echo "phase $phase took $(( $(date +%s) - started )) s" | tee -a "$OUT/$phase.log"
