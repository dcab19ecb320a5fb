"""`indextts synth`: text (or a file of lines) + reference voice -> 24 kHz mono 16-bit WAV."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from indextts.errors import OptionsError, TextError
from indextts.synthesis import DEFAULT_MAX_TOKENS_PER_SEGMENT
from indextts.types import SamplingOptions

logger = logging.getLogger(__name__)


def add_synth_parser(sub) -> None:
    p = sub.add_parser("synth", help="synthesise speech to a WAV file",
                       description="Synthesise TEXT (or each line of --text-file) in the voice of the "
                                   "reference recording(s). Several --voice files are mixed.")
    p.add_argument("--model-dir", required=True, help="checkpoint directory or hub id")
    p.add_argument("--voice", action="append", required=True, metavar="WAV",
                   help="reference recording; repeat to mix several")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to speak")
    src.add_argument("--text-file", help="UTF-8 file; each non-empty line becomes one WAV in --out (a directory)")
    p.add_argument("--out", required=True, help="output WAV path (a directory with --text-file)")
    p.add_argument("--greedy", action="store_true",
                   help="the original's deterministic mode: no sampling, one beam, repetition penalty 10")
    p.add_argument("--num-beams", type=int, default=1,
                   help="with --greedy: beam search width (the original's quality mode is 3; torch engine only)")
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=30)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--repetition-penalty", type=float, default=10.0)
    p.add_argument("--max-codes", type=int, help="most codes per segment (default: the checkpoint's max_mel_tokens)")
    p.add_argument("--max-text-tokens-per-segment", type=int,
                   help=f"segment length limit (default {DEFAULT_MAX_TOKENS_PER_SEGMENT}, or the checkpoint's "
                        "max_text_tokens if smaller)")
    p.add_argument("--engine", choices=["torch", "vllm"], default="torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="share of GPU memory the vLLM engine may take (weights + KV cache)")
    p.set_defaults(func=run_synth)


def options_from_args(args: argparse.Namespace) -> SamplingOptions:
    if args.greedy:
        return SamplingOptions.deterministic(repetition_penalty=args.repetition_penalty,
                                             max_codes=args.max_codes, seed=args.seed, num_beams=args.num_beams)
    if args.num_beams != 1:
        raise OptionsError("--num-beams needs --greedy (beam search does not sample)")
    return SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           repetition_penalty=args.repetition_penalty, seed=args.seed,
                           max_codes=args.max_codes)


def _lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TextError(f"cannot read --text-file {path}: {e}") from e
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise TextError(f"--text-file {path} has no non-empty lines")
    return lines


def run_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from indextts.audio import write_wav
    from indextts.pipeline import IndexTTS

    options = options_from_args(args)
    if options.num_beams > 1 and args.engine != "torch":      # refused before any engine starts
        raise OptionsError("--num-beams > 1 (beam search) runs on the torch engine only; use --engine torch")
    if args.text is not None and not args.text.strip():
        raise TextError("--text is empty; give some text to speak")
    lines = _lines(args.text_file) if args.text_file else None
    # One text at a time: at most a few segments decode together, so the vLLM engine needs few
    # sequence slots (less KV cache to reserve, fewer CUDA graphs to capture at start-up).
    engine_options = {"max_num_seqs": 16} if args.engine == "vllm" else {}
    with IndexTTS.from_pretrained(args.model_dir, device=args.device, engine=args.engine,
                                  gpu_memory_utilization=args.gpu_memory_utilization, **engine_options) as tts:
        voice = tts.voice(args.voice)
        if lines is None:
            audio = tts.synthesize(args.text, voice, options, args.max_text_tokens_per_segment)
            write_wav(args.out, audio, tts.sample_rate)
            print(f"wrote {args.out} ({audio.numel() / tts.sample_rate:.2f} s)")
            return 0
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise OptionsError(f"--out {out_dir} must be a directory when --text-file is given")
        width = len(str(len(lines)))
        for i, line in enumerate(tqdm(lines, desc="synthesising", unit="line")):
            audio = tts.synthesize(line, voice, options, args.max_text_tokens_per_segment)
            write_wav(out_dir / f"{i + 1:0{width}d}.wav", audio, tts.sample_rate)
        print(f"wrote {len(lines)} files to {out_dir}")
    return 0
