"""`BatchQueue`: continuous batching of concurrent async calls (the vocoder, the vLLM latent pass).

Each `submit(item)` waits for its result. While one batch is being computed, newly submitted
items queue and all go together in the next call (at most `max_batch` per call, the most urgent
first: smallest `key`, a wall-clock deadline, else the submission time): nothing waits for a
timer, and an idle queue starts a call at once. Items whose callers were cancelled before
their batch started are dropped; if a call fails, each caller of that batch gets the error; if
the draining task itself is cancelled, its batch's callers are told instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Awaitable, Callable, Generic, Optional, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchQueue(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_batch: Optional[int] = None):
        """`run(items)` computes one batch and returns one result per item, in order."""
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._queue: list[tuple[float, int, Item, asyncio.Future]] = []    # (key, order, item, result)
        self._order = itertools.count()
        self._drain: Optional[asyncio.Task] = None

    async def submit(self, item: Item, key: Optional[float] = None) -> Result:
        """`item`'s result; `key`: its urgency (smaller first; default: now, i.e. first come first)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((time.time() if key is None else key, next(self._order), item, done))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.ensure_future(self._drain_queue())
        return await done

    async def _drain_queue(self) -> None:
        while self._queue:
            cut = len(self._queue) if self.max_batch is None else self.max_batch
            self._queue.sort(key=lambda entry: entry[:2])
            batch, self._queue = self._queue[:cut], self._queue[cut:]
            batch = [(item, done) for _, _, item, done in batch if not done.done()]    # callers gone meanwhile
            if not batch:
                continue
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as e:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e if isinstance(e, Exception) else RuntimeError("batch cancelled"))
                if not isinstance(e, Exception):
                    raise               # this task was cancelled: its callers are told, it ends
                continue
            for (_, done), result in zip(batch, results):
                if not done.done():
                    done.set_result(result)
