"""How far the decoding's own hidden states are from the exact (teacher-forced) latents, measured
as the SNR of the vocoded audio, on a full-size random-weight checkpoint (CPU, float32). The
numbers go into docs/streaming.md.

The exact latent of code j is the hidden state at the input before it: the start code at mel
position 0 for j = 0, else code j - 1 at mel position j. While decoding, the same inputs run at
mel position j + 1 (the original's generation offset), so their hidden states differ, the start
code's excepted. Usage: python scripts/decoding_latents_measure.py --bpe-model tests/golden/tiny/bpe.model
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

from indextts.checkpoint import CheckpointInfo, load_gpt, load_vocoder
from indextts.gpt import generation
from indextts.random_checkpoint import write_random_checkpoint
from indextts.types import SamplingOptions


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (other.double() - reference.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(reference.double().pow(2).sum().item() / noise)


@torch.no_grad()
def decoding_latents(model, prompt: generation.EncodedPrompt, codes: list[int]) -> torch.Tensor:
    """The hidden states the decoding computed for the inputs `[start, c0 .. c(N-2)]`."""
    cache = prompt.cache.copy(prompt.length + len(codes))
    if len(codes) < 2:
        return prompt.start_hidden.unsqueeze(0)
    inputs = torch.tensor(codes[:-1]).unsqueeze(0)
    positions = torch.arange(2, len(codes) + 1)                 # code k ran at k + 2 while decoding
    rest = model(model.embed_mel(inputs, positions), cache)[0]
    return torch.cat([prompt.start_hidden.unsqueeze(0), rest])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bpe-model", required=True)
    p.add_argument("--version", default="1.5")
    p.add_argument("--codes", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        info = CheckpointInfo.from_dir(write_random_checkpoint(tmp, args.version, args.bpe_model, seed=0))
        gpt, vocoder = load_gpt(info), load_vocoder(info)
    rows = []
    for seed in args.seeds:
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, gpt.cfg.condition.num_latents, gpt.cfg.model_dim, generator=gen)
        ids = torch.randint(0, gpt.cfg.number_text_tokens, (30,), generator=gen).tolist()
        started = time.perf_counter()
        prompt = generation.encode_prompt(gpt, cond, ids)
        raw = list(generation.stream_codes(gpt, cond, ids, SamplingOptions(seed=seed, max_codes=args.codes),
                                           prompt=prompt, ignore_stop=True))
        exact = generation.compute_latents(gpt, cond, ids, raw, prompt=prompt)
        decoded = decoding_latents(gpt, prompt, raw)
        speaker = torch.randn(1, 1, vocoder.cfg.speaker_embedding_dim, generator=gen)
        audio_exact = vocoder(exact.unsqueeze(0), speaker)[0, 0]
        audio_decoded = vocoder(decoded.unsqueeze(0), speaker)[0, 0]
        row = {"seed": seed, "codes": len(raw), "latent_snr_db": snr_db(exact, decoded),
               "latent_rel_err": ((decoded - exact).norm() / exact.norm()).item(),
               "audio_snr_db": snr_db(audio_exact, audio_decoded),
               "audio_max_abs": (audio_decoded - audio_exact).abs().max().item(),
               "first_latent_equal": bool(torch.equal(exact[0], decoded[0])), "seconds": time.perf_counter() - started}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
