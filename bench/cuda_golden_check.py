"""Where does CUDA float32 output leave the golden waveform? The golden e2e runs through arms that
switch one thing at a time (chunked vs whole vocoding, CUDA graphs, cuDNN TF32, engine).

    python bench/cuda_golden_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from indextts.pipeline import IndexTTS                       # noqa: E402
from indextts.stages.builder import StageOptions             # noqa: E402
from indextts.types import ChunkSchedule, SamplingOptions    # noqa: E402

TINY = ROOT / "tests" / "golden" / "tiny"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--engines", nargs="+", default=["torch", "vllm"])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    expected = load_file(str(TINY / "expected" / "expected.safetensors"))
    meta = json.loads((TINY / "expected" / "expected.json").read_text())
    rows = []
    for index in (1,):           # the request the GPU test compares
        run = meta["e2e"][index]
        limit = run["max_text_tokens_per_sentence"]
        text, ref, max_tokens = run["text"], TINY / run["audio_prompt"], (limit if limit <= 80 else None)
        want = expected[f"e2e{index}.wav_int16"].reshape(-1).int()
        for engine in args.engines:
            kwargs = {"enforce_eager": True, "max_num_seqs": 8} if engine == "vllm" else {}
            for tf32 in (True, False):
                torch.backends.cudnn.allow_tf32 = tf32
                for whole in (False, True):
                    for graphs in (True, False):
                        if engine == "vllm" and (graphs or not tf32):     # the default vocoder, chunked or whole
                            continue
                        opts = StageOptions(device=args.device, dtype=torch.float32, engine=engine,
                                            gpu_memory_utilization=0.15, engine_kwargs=kwargs,
                                            vocoder_cuda_graphs=graphs,
                                            chunk_schedule=ChunkSchedule.whole() if whole else ChunkSchedule.streaming())
                        with IndexTTS.from_pretrained(TINY, options=opts) as tts:
                            audio = tts.synthesize(text, ref, SamplingOptions.deterministic(),
                                                   max_tokens_per_segment=max_tokens).int()
                        row = {"e2e": index, "engine": engine, "cudnn_tf32": tf32, "whole": whole, "graphs": graphs,
                               "same_length": audio.shape == want.shape}
                        if audio.shape == want.shape:
                            diff = (audio - want).abs()
                            row.update(max_diff=int(diff.max()), first_bad=int((diff > 2).nonzero()[0]) if (diff > 2).any() else None,
                                       n=int(want.numel()))
                        print(row, flush=True)
                        rows.append(row)
                        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
