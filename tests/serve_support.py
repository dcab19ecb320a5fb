"""A GPT stage for Serve tests whose code generation can be held at a given code.

`GatedGPTFactory` builds the real GPT stage (PyTorch engine) in its replica and wraps the
engine's code loop (`indextts.gpt.generation.stream_codes`, which the engine looks up per call):
in the replica's k-th segment, before code `hold_at` is generated, the loop waits until the
file `gates/<k>` exists or the engine is told that the segment's consumer left. Events go to
`gates/log` as JSON lines with k: "held", then "released" or "cancelled", then "ended" with the
number of codes generated. A test thereby sees, without timing, what a client receives while
the GPT is provably mid-segment, and whether leaving stops the generation.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOLD_LIMIT_S = 60.0


@dataclass(frozen=True)
class GatedGPTFactory:
    args: object            # serve_app.config.AppArgs
    gates: str              # a directory
    hold_at: int

    def __call__(self):
        import indextts.gpt.generation as generation
        from serve_app.config import StageFactory

        real, gates, hold_at, counter = generation.stream_codes, Path(self.gates), self.hold_at, itertools.count(1)
        worker = threading.local()      # the cancel flag of the segment this worker thread runs

        def log(**event):
            with open(gates / "log", "a") as f:
                f.write(json.dumps(event) + "\n")

        def hold(k: int) -> None:
            log(event="held", k=k)
            deadline = time.monotonic() + HOLD_LIMIT_S
            while time.monotonic() < deadline:
                if (gates / str(k)).exists():
                    return log(event="released", k=k)
                if worker.cancelled.is_set():
                    return log(event="cancelled", k=k)
                time.sleep(0.01)
            log(event="gave up", k=k)

        def gated(*args, **kwargs):
            k, n = next(counter), 0
            try:
                for n, code in enumerate(real(*args, **kwargs), start=1):
                    if n - 1 == hold_at:
                        hold(k)
                    yield code
            finally:
                log(event="ended", k=k, codes=n)
        generation.stream_codes = gated

        stage = StageFactory("gpt", self.args)()
        engine = stage.engine
        segment_chunks = engine._chunks

        def chunks(cond, segment, options, ignore_stop, schedule, cancelled):
            worker.cancelled = cancelled
            yield from segment_chunks(cond, segment, options, ignore_stop, schedule, cancelled)
        engine._chunks = chunks          # what the engine's worker thread runs per segment
        return stage
