# e2e A/B in one lease: the committed-table commit (d8179cc, .ab/old) against this checkout.
# As run: .ab/ (git-ignored) made with
#   mkdir -p .ab/old && git archive d8179cc indextts serve_app bench/bench_e2e.py bench/common.py \
#       tests/golden/tiny pyproject.toml | tar -x -C .ab/old && cp bench/results/ab-e2e/ab.sh .ab/
# then the p4 staging call with carry [".device/p4", ".cache", ".ab"]: bash .ab/ab.sh
set -o pipefail
source /var/tmp/devenv.sh
BASE=${PYTHONPATH:-}
source bench/gpu_setup.sh            # PYTHONPATH=$EP:$PWD:..., checkpoint at /var/tmp/ckpt-1.5
export INDEXTTS_CACHE_DIR=$PWD/.cache PYTHONUNBUFFERED=1
NEW=$PWD
for side in old new; do
  if [ $side = old ]; then dir=$NEW/.ab/old; else dir=$NEW; fi
  (cd $dir && PYTHONPATH=/var/tmp/indextts-ep:$dir:$BASE python3 bench/bench_e2e.py --engine vllm --dtype bfloat16 \
      --levels 1 16 256 --model-dir /var/tmp/ckpt-1.5 --out $OUT/e2e_$side.json 2>&1 | tee $OUT/e2e_$side.log | grep -E '^\{"concurrency|Error|Traceback')
done
