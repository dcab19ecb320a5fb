#!/usr/bin/env bash
# Source on a GPU machine, in the checkout (vLLM, torch and Ray installed, plus bench/gpu-extra.txt):
#   source bench/gpu_setup.sh
# Environment:
#   BENCH_ENV  a file to source first (e.g. the one that activates the machine's Python); none by default
#   BENCH_DIR  where the plugin entry point and the random checkpoint go (default: build/bench in
#              the checkout, which git ignores, so a second run finds the checkpoint already there)
# Puts this checkout on PYTHONPATH with a dist-info that carries our vLLM plugin entry point (vLLM's
# engine and worker subprocesses find the model only through it), and writes a full-size random
# IndexTTS-1.5 checkpoint to $BENCH_DIR/ckpt-1.5 once. Sets CKPT to that checkpoint.
if [ -n "${BENCH_ENV:-}" ]; then source "$BENCH_ENV"; fi
export BENCH_DIR=${BENCH_DIR:-$PWD/build/bench}
EP=$BENCH_DIR/indextts-ep
mkdir -p $EP/indextts_serve-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: indextts-serve\nVersion: 0.1.0\n' > $EP/indextts_serve-0.1.0.dist-info/METADATA
printf '[vllm.general_plugins]\nindextts = indextts.vllm.plugin:register\n' > $EP/indextts_serve-0.1.0.dist-info/entry_points.txt
export PYTHONPATH=$EP:$PWD:$PYTHONPATH
CKPT=$BENCH_DIR/ckpt-1.5
if [ ! -f $CKPT/config.yaml ]; then
  python3 -m indextts random-checkpoint --version 1.5 --bpe-model tests/golden/tiny/bpe.model --out $CKPT
fi
