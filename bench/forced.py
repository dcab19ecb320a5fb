"""Forced-length generation for benchmarks on random-weight checkpoints.

Random weights rarely emit the stop code, so a benchmark fixes how many codes each segment
generates: these wrappers call the GPT engine with its `ignore_stop` argument (the stop code is
an ordinary code, generation runs to `max_codes`). The product never does this.

    run_to_max_codes(tts.gpt)                 # in process: each request's options.max_codes
    serve.run(build_forced_app(args, 300))    # through Serve: every segment exactly 300 codes
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


class ForcedLength:
    """A GPT engine whose requests run to `codes` codes (None: to each request's `max_codes`)."""

    def __init__(self, engine, codes: Optional[int] = None):
        self.engine = engine
        self.codes = codes

    def generate(self, cond, segment, options, schedule=None):
        if self.codes is not None:
            options = dataclasses.replace(options, max_codes=self.codes)
        elif options.max_codes is None:
            raise ValueError("forced-length requests need max_codes")
        return self.engine.generate(cond, segment, options, ignore_stop=True, schedule=schedule)

    def __getattr__(self, name):          # warm_up, check_health, ...: the engine's own
        return getattr(self.engine, name)


def run_to_max_codes(gpt_stage, codes: Optional[int] = None):
    """Makes a built GPT stage (`indextts.stages.gpt.EngineGPTStage`) generate forced lengths."""
    gpt_stage.engine = ForcedLength(gpt_stage.engine, codes)
    return gpt_stage


@dataclass(frozen=True)
class ForcedGPTFactory:
    """Builds the GPT stage in its Serve replica, then forces its lengths."""

    args: object            # serve_app.config.AppArgs
    codes: int

    def __call__(self):
        from serve_app.config import StageFactory
        return run_to_max_codes(StageFactory("gpt", self.args)(), self.codes)


def build_forced_app(args: dict, codes: int):
    """`serve_app.app.build_app` with every segment generating exactly `codes` codes."""
    from serve_app.app import build_graph
    from serve_app.config import AppArgs, StageFactory

    args = AppArgs.model_validate(args)
    limit = None
    if args.check_model_dir:
        from indextts.checkpoint import CheckpointInfo
        limit = CheckpointInfo.from_dir(args.model_dir).config.gpt.max_segment_tokens
    return build_graph(args, StageFactory("frontend", args), ForcedGPTFactory(args, codes),
                       StageFactory("vocoder", args), max_tokens_limit=limit)
