"""The text frontend stage: normalise, tokenise and segment, off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from indextts.checkpoint import CheckpointInfo
from indextts.scheduling import FIRST_AUDIO_LEAD_S, cpu_gate
from indextts.stages.base import FrontendStage
from indextts.types import FrontendResult


SECONDS_PER_CHAR_LEFT = 0.01     # urgency lost per character still to normalise


class TextFrontendStage(FrontendStage):
    """`FrontendStage` over `indextts.text.TextFrontend` (the original's normaliser + BPE)."""

    def __init__(self, frontend, executor: Optional[ThreadPoolExecutor] = None):
        self.frontend = frontend
        self._executor = executor

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "TextFrontendStage":
        from indextts.text import TextFrontend
        return cls(TextFrontend.from_model_dir(info.model_dir, cache_dir=options.text_cache_dir))

    def process_sync(self, text: str, max_tokens_per_segment: int,
                     cancelled: Optional[threading.Event] = None) -> FrontendResult:
        """The transducers hold the GIL: requests take turns through the process's CPU gate, due
        as their first audio is, less so the more text they have left (so a short request is
        not queued behind a long one's whole normalisation). Once `cancelled` is set, the
        normalisation stops at its next pass (`WorkCancelled`)."""
        first_audio = time.time() - FIRST_AUDIO_LEAD_S

        def key_of(chars_left: float) -> float:
            return first_audio + SECONDS_PER_CHAR_LEFT * chars_left
        key = key_of(len(text) if isinstance(text, str) else 0)
        gate = cpu_gate()
        # less urgent work waits at this one's next pause
        with gate.reserve(key), gate.turn(key, key_of, cancelled=cancelled):
            return self.frontend.process(text, max_tokens=max_tokens_per_segment)

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()       # a cancelled caller (a client gone) stops the thread's work too
        try:
            return await loop.run_in_executor(self._executor, self.process_sync, text, max_tokens_per_segment,
                                              cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
