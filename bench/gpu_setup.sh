#!/usr/bin/env bash
# Source on the GPU machine after the bundle is staged (bash .device/pK/stage.sh for each part):
#   source bench/gpu_setup.sh
# Puts this checkout on PYTHONPATH with a dist-info that carries our vLLM plugin entry point (vLLM's
# engine and worker subprocesses find the model only through it), and writes a full-size random
# IndexTTS-1.5 checkpoint to /var/tmp/ckpt-1.5 once (/var/tmp survives between calls on a warm
# machine, /tmp does not seem to: writing the checkpoint takes minutes there).
source /var/tmp/devenv.sh
EP=/var/tmp/indextts-ep
mkdir -p $EP/indextts_serve-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: indextts-serve\nVersion: 0.1.0\n' > $EP/indextts_serve-0.1.0.dist-info/METADATA
printf '[vllm.general_plugins]\nindextts = indextts.vllm.plugin:register\n' > $EP/indextts_serve-0.1.0.dist-info/entry_points.txt
export PYTHONPATH=$EP:$PWD:$PYTHONPATH
if [ ! -f /var/tmp/ckpt-1.5/config.yaml ]; then
  python3 -m indextts random-checkpoint --version 1.5 --bpe-model tests/golden/tiny/bpe.model --out /var/tmp/ckpt-1.5
fi
