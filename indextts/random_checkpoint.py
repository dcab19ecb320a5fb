"""Full-size checkpoints with random weights, in the official layout, for GPU tests and benchmarks.

Real weights cannot be downloaded everywhere we test; this writes `config.yaml`, `gpt.pth`
(fp32 state dict, as the official file), `bigvgan_generator.pth` (`{"generator": ...}` with
weight-norm pairs) and a copy of a SentencePiece model. The files go through exactly the loaders
that read the real checkpoints. Random weights rarely emit the stop code: benchmarks force the
number of codes (`SamplingOptions(max_codes=N, ignore_stop=True)`); 23.4375 codes are one second.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
import yaml

from indextts.checkpoint import build_gpt, build_vocoder
from indextts.config import IndexTTSConfig
from indextts.errors import ConfigError

_KEEP_AS_BUILT = ("pe", "filter")   # sinusoid table and anti-alias filters are constants


def _official_yaml(cfg: IndexTTSConfig) -> dict:
    g, b, c = cfg.gpt, cfg.bigvgan, cfg.gpt.condition
    return {
        "dataset": {"bpe_model": "bpe.model", "sample_rate": cfg.sample_rate},
        "gpt": {
            "model_dim": g.model_dim, "max_mel_tokens": g.max_mel_tokens, "max_text_tokens": g.max_text_tokens,
            "heads": g.heads, "layers": g.layers, "activation_function": g.activation_function,
            "number_text_tokens": g.number_text_tokens, "number_mel_codes": g.number_mel_codes,
            "start_mel_token": g.start_mel_token, "stop_mel_token": g.stop_mel_token,
            "start_text_token": g.start_text_token, "stop_text_token": g.stop_text_token,
            "use_mel_codes_as_input": True, "mel_length_compression": 1024, "train_solo_embeddings": False,
            "condition_type": g.condition_type,
            "condition_module": {"output_size": c.output_size, "linear_units": c.linear_units,
                                 "attention_heads": c.attention_heads, "num_blocks": c.num_blocks,
                                 "input_layer": c.input_layer, "perceiver_mult": c.perceiver_mult},
        },
        "bigvgan": {
            "resblock": b.resblock, "upsample_rates": list(b.upsample_rates),
            "upsample_kernel_sizes": list(b.upsample_kernel_sizes),
            "upsample_initial_channel": b.upsample_initial_channel,
            "resblock_kernel_sizes": list(b.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in b.resblock_dilation_sizes],
            "feat_upsample": b.feat_upsample, "speaker_embedding_dim": b.speaker_embedding_dim,
            "cond_d_vector_in_each_upsampling_layer": b.cond_d_vector_in_each_upsampling_layer,
            "gpt_dim": b.gpt_dim, "activation": b.activation, "snake_logscale": b.snake_logscale,
            "num_mels": b.num_mels, "sampling_rate": b.sampling_rate,
        },
        "gpt_checkpoint": "gpt.pth",
        "bigvgan_checkpoint": "bigvgan_generator.pth",
        "version": float(cfg.version),
    }


@torch.no_grad()
def randomize(state: dict[str, torch.Tensor], generator: torch.Generator, std: float | None) -> None:
    """Re-initialise every tensor in place: matrices N(0, std or 1/sqrt(fan_in)), norms at
    identity, biases zero, weight-norm gains equal to ||v|| (so the folded weight is v)."""
    for name, t in state.items():
        leaf = name.rsplit(".", 1)[-1]
        if not t.is_floating_point() or leaf in _KEEP_AS_BUILT:
            continue
        if leaf in ("running_var",) or (t.dim() == 1 and leaf in ("weight", "gamma")):
            t.fill_(1.0)
        elif leaf in ("bias", "running_mean", "alpha", "beta"):
            t.zero_()
        elif leaf == "weight_g":
            continue
        else:
            fan_in = max(1, t[0].numel()) if t.dim() > 1 else t.numel()
            t.normal_(0.0, std if std is not None else 1.0 / math.sqrt(fan_in), generator=generator)
    for name, g in state.items():
        if name.endswith("weight_g"):
            v = state[name[: -len("g")] + "v"]
            g.copy_(v.flatten(1).norm(dim=1).view_as(g))


def write_random_checkpoint(out_dir: str | Path, version: str = "1.5", bpe_model: str | Path | None = None,
                            seed: int = 0) -> Path:
    """Write a random-weight checkpoint of IndexTTS `version` ("1.0" or "1.5") into `out_dir`."""
    cfg = IndexTTSConfig.preset(version)
    if bpe_model is None or not Path(bpe_model).is_file():
        raise ConfigError("pass bpe_model: a SentencePiece model file to copy into the checkpoint")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    gpt = build_gpt(cfg).state_dict()
    randomize(gpt, gen, std=0.02)
    torch.save(gpt, out / "gpt.pth")
    del gpt
    vocoder = build_vocoder(cfg).state_dict()
    randomize(vocoder, gen, std=None)
    torch.save({"generator": vocoder}, out / "bigvgan_generator.pth")
    shutil.copyfile(bpe_model, out / "bpe.model")
    (out / "config.yaml").write_text(yaml.safe_dump(_official_yaml(cfg), sort_keys=False))
    return out


def add_random_checkpoint_parser(sub) -> None:
    p = sub.add_parser("random-checkpoint", help="write a full-size random-weight checkpoint (tests, benchmarks)")
    p.add_argument("--version", choices=["1.0", "1.5"], default="1.5")
    p.add_argument("--bpe-model", required=True, help="SentencePiece model to copy as bpe.model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=lambda a: print(write_random_checkpoint(a.out, a.version, a.bpe_model, a.seed)))
