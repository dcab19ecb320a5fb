"""The text frontend stage: normalise, tokenise and segment, off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from indextts.checkpoint import CheckpointInfo
from indextts.stages.base import FrontendStage
from indextts.types import FrontendResult


class TextFrontendStage(FrontendStage):
    """`FrontendStage` over `indextts.text.TextFrontend` (the original's normaliser + BPE)."""

    def __init__(self, frontend, executor: Optional[ThreadPoolExecutor] = None):
        self.frontend = frontend
        self._executor = executor

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, options) -> "TextFrontendStage":
        from indextts.text import TextFrontend
        return cls(TextFrontend.from_model_dir(info.model_dir, cache_dir=options.text_cache_dir))

    def process_sync(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        return self.frontend.process(text, max_tokens=max_tokens_per_segment)

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.process_sync, text, max_tokens_per_segment)
