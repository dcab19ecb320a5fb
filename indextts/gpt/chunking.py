"""`CodeCutter`: a segment's final codes, as they arrive, cut into chunks on a `ChunkSchedule`.

Engine-neutral: each engine attaches the latents of a cut (the PyTorch engine from its
`LatentPass`, the vLLM engine from its worker) and makes the `CodeChunk`.
"""

from __future__ import annotations

from dataclasses import dataclass

from indextts.types import ChunkSchedule


@dataclass(frozen=True)
class Cut:
    """Consecutive final codes of one segment; `start` is the index of the first in the segment."""

    codes: list[int]
    start: int
    final: bool


class CodeCutter:
    """One object per segment. A full chunk is kept until a code beyond it arrives (or the
    segment ends), so that it is known not to be the last: no chunk is empty unless the segment
    has no codes at all, and exactly one, the last, is final."""

    def __init__(self, schedule: ChunkSchedule):
        self.schedule = schedule
        self.pending: list[int] = []      # final codes not yet in a chunk
        self.start = 0                    # index in the segment of pending[0]
        self.index = 0                    # number of chunks cut

    def push(self, codes: list[int]) -> list[Cut]:
        """codes: the next final codes -> the chunks they complete (none final)."""
        self.pending += codes
        cuts = []
        while (size := self.schedule.size(self.index)) is not None and len(self.pending) > size:
            cuts.append(self._cut(size, final=False))
        return cuts

    def finish(self) -> Cut:
        """The segment ended: the last chunk, with what is pending."""
        return self._cut(len(self.pending), final=True)

    def _cut(self, n: int, final: bool) -> Cut:
        cut = Cut(self.pending[:n], self.start, final)
        self.pending = self.pending[n:]
        self.start += n
        self.index += 1
        return cut
