"""The ingress's clients of the stage deployments: the library's stage interfaces over Serve
handles, with what keeps a request alive when a replica fails.

- A call whose replica died (Ray's `RayActorError`: `ActorDiedError`, `ActorUnavailableError`)
  is made once more; Serve routes it to another replica. Frontend and vocoder calls are stateless.
  A GPT segment stream is repeated whole if none of its chunks was delivered yet; after that only
  when its codes are reproducible (greedy, or seeded): the repeat's codes already delivered are
  checked against them and skipped. Errors of the request itself (the library's, the API's) and
  cancellations are never repeated.
- A call not answered within `PROBE_AFTER_S` asks whether its stage has a live replica (one
  broadcast health check per stage at a time, at most one per `PROBE_AFTER_S`); with none (all
  dead or still starting) it gives up at once with `StageUnavailableError` (HTTP 503,
  `Retry-After`) instead of waiting in Serve's queue for a replica that may take minutes to start.
- Serve's own refusals (`BackPressureError`: the stage's `max_queued_requests` is reached;
  `DeploymentUnavailableError`) become `StageUnavailableError` too: raised as they are, Serve's
  own handlers would answer them in plain text, outside the API's error envelope.

Closing a GPT stream early cancels the remote call (and with it the engine's generation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import torch
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from indextts.stages import FrontendStage, GPTStage, VocoderStage
from indextts.types import (ChunkSchedule, CodeChunk, FrontendResult, LatentWindow, SamplingOptions, Segment,
                            VoiceSpec)
from serve_app.errors import RETRY_AFTER_S, StageUnavailableError

logger = logging.getLogger(__name__)

RETRIES = 1              # further attempts of a call whose replica died
PROBE_AFTER_S = 1.0      # an unanswered call asks this often whether its stage has a live replica
PROBE_TIMEOUT_S = 2.0    # replicas slower than this to answer the probe count as busy, not gone


def is_replica_death(exc: BaseException) -> bool:
    """The call failed because its replica died or could not be reached, not because of its input."""
    return isinstance(exc, (RayActorError, ReplicaUnavailableError))


def reproducible(options: SamplingOptions) -> bool:
    """Whether generating again gives the same codes: greedy decoding, or sampling with a seed."""
    return options.greedy or options.seed is not None


class RemoteStage:
    """One stage deployment's handle, its availability probe and its calls with retries."""

    def __init__(self, handle: DeploymentHandle, name: str):
        self.handle, self.name = handle, name
        self._probe: Optional[asyncio.Future] = None
        self._probed_at = float("-inf")
        self._available = True

    def reraise(self, exc: Exception) -> None:
        """Raise `exc` as the API should see it: Serve's refusals and replica deaths as a 503."""
        if isinstance(exc, BackPressureError):
            raise StageUnavailableError(f"the {self.name} stage is at capacity; retry in {RETRY_AFTER_S} s") from exc
        if isinstance(exc, DeploymentUnavailableError) or is_replica_death(exc):
            raise StageUnavailableError(f"the {self.name} stage is unavailable; retry in {RETRY_AFTER_S} s") from exc
        raise exc

    async def available(self) -> bool:
        """Whether some replica answers a health check; one probe at a time, shared by all calls,
        and a fresh one at most every PROBE_AFTER_S."""
        if self._probe is None or self._probe.done():
            if time.monotonic() - self._probed_at < PROBE_AFTER_S:
                return self._available
            self._probed_at = time.monotonic()
            self._probe = asyncio.ensure_future(self._ask())
        return await asyncio.shield(self._probe)

    async def _ask(self) -> bool:
        try:
            results = await self.handle.broadcast("check_health").results_async(
                timeout_s=PROBE_TIMEOUT_S, return_exceptions=True)
        except DeploymentUnavailableError:       # Serve's router knows no running replica
            self._available = False
        except TimeoutError:                     # replicas that answer slowly are busy, not gone
            self._available = True
        except Exception:                        # the probe's own failure must not fail the calls
            logger.exception("probing the %s stage failed", self.name)
            self._available = True
        else:
            self._available = any(not isinstance(r, BaseException) for r in results)
        if not self._available:
            logger.warning("no live replica of the %s stage", self.name)
        return self._available

    async def answered(self, pending: Awaitable, cancel: Callable[[], None]) -> Any:
        """`pending`'s result; while it has none, give up (StageUnavailableError, after `cancel()`)
        as soon as the stage is found to have no live replica."""
        task = asyncio.ensure_future(pending)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROBE_AFTER_S)
                if done:
                    return task.result()
                if not await self.available():
                    raise StageUnavailableError(f"no replica of the {self.name} stage is available; "
                                                f"retry in {RETRY_AFTER_S} s")
        finally:
            if not task.done():
                task.cancel()
                cancel()

    async def call(self, method: str, *args) -> Any:
        """A unary call, made once more if its replica died."""
        for attempt in range(RETRIES + 1):
            response = getattr(self.handle, method).remote(*args)
            try:
                return await self.answered(_result(response), response.cancel)
            except Exception as e:
                if attempt < RETRIES and is_replica_death(e):
                    logger.warning("%s.%s: replica lost (%s); calling another", self.name, method, type(e).__name__)
                    continue
                self.reraise(e)


async def _result(response) -> Any:
    return await response


async def _next(stream) -> Optional[CodeChunk]:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class FrontendClient(FrontendStage):
    """`FrontendStage` over the Frontend deployment."""

    def __init__(self, handle: DeploymentHandle):
        self.remote = RemoteStage(handle, "Frontend")

    async def process(self, text: str, max_tokens_per_segment: int) -> FrontendResult:
        return await self.remote.call("process", text, max_tokens_per_segment)

    async def ready(self) -> None:
        await self.remote.handle.ready.remote()


class GPTClient(GPTStage):
    """`GPTStage` over the GPT deployment: a segment whose replica died is generated again (see the
    module docstring); closing the stream early cancels the remote call."""

    def __init__(self, handle: DeploymentHandle):
        self.remote = RemoteStage(handle.options(stream=True), "GPT")

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        delivered: list[torch.Tensor] = []          # codes of the chunks yielded so far, in order
        for attempt in range(RETRIES + 1):
            try:
                async with aclosing(self._attempt(voice, segment, options, schedule, delivered)) as chunks:
                    async for chunk in chunks:
                        delivered.append(chunk.codes)
                        yield chunk
                return
            except Exception as e:
                if attempt == RETRIES or not is_replica_death(e):
                    self.remote.reraise(e)
                if delivered and not reproducible(options):
                    raise StageUnavailableError("the GPT replica of a segment was lost mid-segment, and its "
                                                "sampled codes cannot be generated again") from e
                logger.warning("GPT: replica lost (%s) after %d codes of a segment; generating it again",
                               type(e).__name__, sum(len(c) for c in delivered))

    async def _attempt(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions,
                       schedule: Optional[ChunkSchedule], delivered: list[torch.Tensor]) -> AsyncIterator[CodeChunk]:
        """One remote generation of the segment, less the codes already `delivered` (which it must repeat)."""
        responses = self.remote.handle.generate.remote(voice, segment, options, schedule)
        done = sum(len(c) for c in delivered)
        before = torch.cat(delivered) if delivered else None
        finished = False
        try:
            chunk = await self.remote.answered(_next(responses), responses.cancel)
            while chunk is not None:
                if chunk.start < done:
                    chunk = _unseen(chunk, before, done)
                if chunk is not None:
                    yield chunk
                chunk = await _next(responses)
            finished = True
        finally:
            if not finished:
                responses.cancel()

    async def ready(self) -> None:
        await self.remote.handle.options(stream=False).ready.remote()


def _unseen(chunk: CodeChunk, before: torch.Tensor, done: int) -> Optional[CodeChunk]:
    """The part of a repeated generation's `chunk` past the first `done` codes, which must equal
    `before` (the codes delivered by the lost attempt); None if nothing of it is new."""
    end = chunk.start + len(chunk.codes)
    seen = min(end, done) - chunk.start
    if not torch.equal(chunk.codes[:seen], before[chunk.start:chunk.start + seen]) or (chunk.final and end < done):
        raise RuntimeError("the segment generated again differs from the codes already delivered")
    if seen == len(chunk.codes) and not chunk.final:
        return None
    return CodeChunk(codes=chunk.codes[seen:], latents=chunk.latents[seen:], start=chunk.start + seen,
                     final=chunk.final, stopped=chunk.stopped)


class VocoderClient(VocoderStage):
    """`VocoderStage` over the Vocoder deployment; windows are stateless, so any replica vocodes any."""

    def __init__(self, handle: DeploymentHandle):
        self.remote = RemoteStage(handle, "Vocoder")

    async def vocode(self, voice: VoiceSpec, window: LatentWindow) -> torch.Tensor:
        return await self.remote.call("vocode", voice, window)

    async def window_frames(self) -> tuple[int, int]:
        return await self.remote.call("window_frames")

    async def ready(self) -> None:
        await self.remote.handle.ready.remote()
