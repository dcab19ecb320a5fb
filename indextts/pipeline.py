"""Single-process synthesis: load a checkpoint once, turn text + voice into 24 kHz audio.

The same stage objects serve the Ray Serve graph (`serve_app/`), which wraps each in a
deployment; here they run side by side in one process:

    tts = IndexTTS.from_pretrained("checkpoints/IndexTTS-1.5", device="cuda")
    voice = tts.voice(["alice.wav"])
    audio = tts.synthesize("Hello there.", voice)            # [n] int16 at 24 kHz
    for chunk in tts.stream("A long text ...", voice): ...   # AudioChunk per segment

All request state lives in the call; one `IndexTTS` is safe to use from many threads.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Optional, Sequence, Union

import torch

from indextts.audio import ReferenceLimits, float_to_int16, reference_mel
from indextts.batching import BatchQueue
from indextts.checkpoint import CheckpointInfo, load_gpt, load_vocoder
from indextts.errors import OptionsError, VoiceError
from indextts.stages import VoiceSpec, weights_or_uniform
from indextts.synthesis import DEFAULT_MAX_TOKENS_PER_SEGMENT, SAMPLE_RATE, Synthesizer
from indextts.types import AudioChunk, CodeChunk, FrontendResult, SamplingOptions, Segment

logger = logging.getLogger(__name__)

ENGINES = ("torch", "vllm")
# Partial code chunks are emitted this often while a segment is being generated.
CODE_CHUNK = 16
# Mixed-length vocoder batches: the longest item at most this many times the shortest, plus a
# slack in frames so that short segments (cheap to pad, costly in kernel launches) always share.
MIXED_LENGTH_RATIO = 1.5
MIXED_LENGTH_SLACK = 16


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """A torch device that exists here, or `OptionsError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise OptionsError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionsError(f"device {device!r} requested but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionsError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise OptionsError(f"device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def vocoder_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The vocoder's dtype: `dtype` on GPUs; float32 elsewhere (BigVGAN in half precision on a
    CPU is slow and no more exact)."""
    return dtype if device.type == "cuda" else torch.float32


class KeyedCache:
    """A small thread-safe LRU: `get_or_compute(key, fn)`. Concurrent misses on one key compute
    once: the first caller computes, the others wait for its result (or its error)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: "collections.OrderedDict[str, object]" = collections.OrderedDict()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: str, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = concurrent.futures.Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result()
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                del self._pending[key]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._pending[key]
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        pending.set_result(value)
        return value

    def __len__(self) -> int:
        return len(self._items)


def voice_mels(voice: VoiceSpec, limits: ReferenceLimits) -> list[torch.Tensor]:
    """`[1, 100, frames]` log-mel of each reference of `voice`."""
    return [reference_mel(ref, limits) for ref in voice.references]


class TextFrontendStage:
    """`FrontendStage` over the text frontend; normalisation runs off the event loop."""

    def __init__(self, frontend, executor: Optional[ThreadPoolExecutor] = None):
        self.frontend = frontend
        self._executor = executor

    @classmethod
    def from_model_dir(cls, model_dir: Union[str, Path], cache_dir: Optional[str] = None) -> "TextFrontendStage":
        from indextts.text import TextFrontend
        return cls(TextFrontend.from_model_dir(model_dir, cache_dir=cache_dir))

    def process_sync(self, text: str, max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT) -> FrontendResult:
        return self.frontend.process(text, max_tokens=max_tokens_per_segment)

    async def process(self, text: str, max_tokens_per_segment: int = DEFAULT_MAX_TOKENS_PER_SEGMENT) -> FrontendResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.process_sync, text, max_tokens_per_segment)


class VoiceConditioner:
    """Conditioning latents per voice: reference mels through the conformer + perceiver, the
    references averaged (optionally weighted), cached by the voice's content key."""

    def __init__(self, model, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64):
        self.model = model          # anything with get_conditioning(mel, lengths), device, dtype
        self.limits = limits
        self._cache = KeyedCache(cache_size)

    def __call__(self, voice: VoiceSpec) -> torch.Tensor:
        """`[1, 32, D]` conditioning latents of `voice`, computed once per key."""
        return self._cache.get_or_compute(voice.key, lambda: self._compute(voice))

    @torch.no_grad()
    def _compute(self, voice: VoiceSpec) -> torch.Tensor:
        from indextts.gpt.generation import average_conditioning
        latents = []
        for mel in voice_mels(voice, self.limits):
            mel = mel.to(self.model.device, self.model.dtype)
            lengths = torch.tensor([mel.shape[-1]], device=self.model.device)
            latents.append(self.model.get_conditioning(mel, lengths))
        return average_conditioning(latents, voice.weights)


class TorchGPTStage:
    """`GPTStage` on the PyTorch reference engine: conditioning + code generation + latents.

    Each segment runs in a worker thread with its own KV cache; codes are forwarded to the event
    loop as they come and a cancelled consumer stops the worker at the next code.
    """

    def __init__(self, model, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64,
                 max_workers: int = 16):
        self.model = model
        self.conditioning = VoiceConditioner(model, limits, cache_size)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpt")

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, device: torch.device, dtype: torch.dtype, **kw) -> "TorchGPTStage":
        return cls(load_gpt(info, device, dtype), **kw)

    @property
    def cfg(self):
        return self.model.cfg

    def check_options(self, segment: Segment, options: SamplingOptions) -> None:
        check_segment_options(self.cfg, segment, options)

    def _run_segment(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions,
                     emit: Callable[[int], None], cancelled: threading.Event) -> CodeChunk:
        from indextts.gpt.generation import compute_latents, encode_prompt, result_from_raw, stream_codes
        cond = self.conditioning(voice)
        with torch.no_grad():
            prompt = encode_prompt(self.model, cond, segment.ids)
            if options.num_beams > 1:   # the whole segment is searched before any code is known
                from indextts.gpt.beam_search import beam_search_codes
                result = beam_search_codes(self.model, cond, segment.ids, options, options.num_beams, prompt=prompt)
                for code in result.codes_raw.tolist():
                    emit(code)
            else:
                raw = []
                for code in stream_codes(self.model, cond, segment.ids, options, prompt=prompt):
                    if cancelled.is_set():
                        raise asyncio.CancelledError()
                    raw.append(code)
                    emit(code)
                result = result_from_raw(self.cfg, raw, options)
            latents = compute_latents(self.model, cond, segment.ids, result.codes, prompt=prompt)
        return CodeChunk(codes=result.codes, latents=latents.float().cpu(), final=True, stopped=result.stopped)

    async def generate(self, voice: VoiceSpec, segment: Segment, options: SamplingOptions = SamplingOptions(),
                       partial: bool = True) -> AsyncIterator[CodeChunk]:
        self.check_options(segment, options)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(code: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, code)

        future = loop.run_in_executor(self._executor, self._run_segment, voice, segment, options, emit, cancelled)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        pending: list[int] = []
        try:
            while True:
                code = await queue.get()
                if code is None:
                    break
                if code != self.cfg.stop_mel_token or options.ignore_stop:
                    pending.append(code)
                if partial and len(pending) >= CODE_CHUNK:
                    yield CodeChunk(codes=torch.tensor(pending, dtype=torch.long))
                    pending = []
            final = await future
            if partial and pending:
                yield CodeChunk(codes=torch.tensor(pending, dtype=torch.long))
            yield final
        finally:
            cancelled.set()
            if not future.done():
                # Let the worker notice the flag and finish; its result is discarded.
                await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved, so an abandoned run does not log as unhandled

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def check_segment_options(cfg, segment: Segment, options: SamplingOptions) -> None:
    """Reject what would overflow the checkpoint's position tables."""
    if not segment.ids:
        raise OptionsError("a segment needs at least one text token")
    if len(segment.ids) > cfg.max_text_tokens:
        raise OptionsError(f"a segment of {len(segment.ids)} text tokens exceeds this checkpoint's "
                           f"max_text_tokens ({cfg.max_text_tokens}); lower max_tokens_per_segment")
    if options.max_codes is not None and options.max_codes > cfg.max_mel_tokens:
        raise OptionsError(f"max_codes {options.max_codes} exceeds this checkpoint's max_mel_tokens "
                           f"({cfg.max_mel_tokens})")


class VocoderEngineStage:
    """`VocoderStage` on BigVGAN: speaker embedding per voice (cached) and latents -> audio.

    Concurrent `vocode()` calls are batched: while one BigVGAN call runs, new segments queue and
    go together in the next (at most `max_batch` per call). A BigVGAN call costs about the same
    host time whatever its batch (~1,000 kernel launches), so batching is what lets concurrent
    streams share the vocoder. Items of equal length are stacked, no padding; a batched
    convolution may still sum in another order than an unbatched one, so results can differ in
    the last float bit (at most one int16 step after conversion, tests/test_pipeline.py). With
    `mixed_length_batches`, items of different lengths share a call too, right-padded with
    per-item lengths (`BigVGAN.forward(..., lengths)`): equal to the unbatched result within
    ~1e-6, but padded calls are a different computation from the unpadded one, hence opt-in."""

    def __init__(self, model, limits: ReferenceLimits = ReferenceLimits(), cache_size: int = 64,
                 max_workers: int = 2, max_batch: int = 32, mixed_length_batches: bool = False):
        if max_batch < 1:
            raise OptionsError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model
        self.limits = limits
        self.max_batch = max_batch
        self.mixed_length_batches = mixed_length_batches
        self._voices = KeyedCache(cache_size)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vocoder")
        # Everything waiting goes to one vocode_batch call, which splits it into max_batch groups.
        self._queue = BatchQueue(self._vocode_items)

    @classmethod
    def from_checkpoint(cls, info: CheckpointInfo, device: torch.device, dtype: torch.dtype, **kw) -> "VocoderEngineStage":
        return cls(load_vocoder(info, device, dtype), **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def speaker_embedding(self, voice: VoiceSpec) -> torch.Tensor:
        """`[1, 1, S]`: the (weighted) mean of the references' ECAPA embeddings, computed once."""
        return self._voices.get_or_compute(voice.key, lambda: self._compute_speaker(voice))

    @torch.no_grad()
    def _compute_speaker(self, voice: VoiceSpec) -> torch.Tensor:
        embs = [self.model.speaker_embedding(mel.to(self.device, self.dtype)) for mel in voice_mels(voice, self.limits)]
        w = weights_or_uniform(voice.weights, len(embs)).to(self.device, torch.float32)
        return (torch.stack(embs).float() * w.view(-1, 1, 1, 1)).sum(0).to(self.dtype)

    def _groups(self, latents: Sequence[torch.Tensor]) -> list[list[int]]:
        """Indices of the non-empty items, grouped into BigVGAN calls of at most `max_batch`.
        Equal lengths only, unless `mixed_length_batches`: then lengths sorted, and a call's
        longest item at most `MIXED_LENGTH_RATIO` x its shortest + `MIXED_LENGTH_SLACK` frames,
        which bounds the padding."""
        order = sorted((i for i, lat in enumerate(latents) if lat.shape[0] > 0), key=lambda i: latents[i].shape[0])
        groups: list[list[int]] = []
        for i in order:
            n = latents[i].shape[0]
            if groups and len(groups[-1]) < self.max_batch:
                first = latents[groups[-1][0]].shape[0]
                if n == first or (self.mixed_length_batches and n <= MIXED_LENGTH_RATIO * first + MIXED_LENGTH_SLACK):
                    groups[-1].append(i)
                    continue
            groups.append([i])
        return groups

    @torch.no_grad()
    def vocode_batch_sync(self, voices: Sequence[VoiceSpec], latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each `[n_i, D]` latents -> `[n_i * 1024]` float32 samples on the CPU (see the class
        docstring for how items share calls)."""
        out: list[torch.Tensor] = [torch.zeros(0)] * len(latents)
        hop = self.model.hop_length
        for idx in self._groups(latents):
            lengths = [latents[i].shape[0] for i in idx]
            spk = torch.cat([self.speaker_embedding(voices[i]) for i in idx])               # [B, 1, S]
            lat = torch.nn.utils.rnn.pad_sequence([latents[i] for i in idx], batch_first=True)  # right-padded
            lat = lat.to(self.device, self.dtype)                                            # [B, n_max, D]
            padded = len(set(lengths)) > 1
            wav = self.model(lat, spk, torch.tensor(lengths) if padded else None)[:, 0].float().cpu()
            for row, i in enumerate(idx):
                out[i] = wav[row, :lengths[row] * hop].clone()    # its own storage, not a view of the batch
        return out

    async def vocode_batch(self, voices: Sequence[VoiceSpec], latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.vocode_batch_sync, list(voices), list(latents))

    async def vocode(self, voice: VoiceSpec, latents: torch.Tensor) -> torch.Tensor:
        return await self._queue.submit((voice, latents))

    async def _vocode_items(self, items: list[tuple[VoiceSpec, torch.Tensor]]) -> list[torch.Tensor]:
        return await self.vocode_batch([v for v, _ in items], [x for _, x in items])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _LoopThread:
    """An asyncio loop on a daemon thread, so synchronous callers can drive async stages."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="indextts-loop", daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator) -> Iterator:
        """Drive an async iterator from synchronous code, one item at a time."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


VoiceLike = Union[VoiceSpec, str, Path, Sequence[Union[str, Path]]]


class IndexTTS:
    """Load once, synthesise many times (from any number of threads)."""

    def __init__(self, info: CheckpointInfo, frontend: TextFrontendStage, gpt, vocoder: VocoderEngineStage,
                 lookahead: int = 4):
        self.info = info
        self.frontend = frontend
        self.gpt = gpt
        self.vocoder = vocoder
        self.synthesizer = Synthesizer(frontend, gpt, vocoder, lookahead=lookahead)
        self._loop = _LoopThread()

    @classmethod
    def from_pretrained(cls, model_dir: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        dtype: Optional[torch.dtype] = None, engine: str = "torch",
                        gpu_memory_utilization: float = 0.5, text_cache_dir: Optional[str] = None,
                        reference_limits: ReferenceLimits = ReferenceLimits(), **engine_kwargs) -> "IndexTTS":
        """Load `model_dir` (a directory or hub id). `engine` is "torch" (any device) or "vllm"."""
        if engine not in ENGINES:
            raise OptionsError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise OptionsError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        dev = parse_device(device)
        dtype = dtype or default_dtype(dev)
        info = CheckpointInfo.from_dir(model_dir)
        frontend = TextFrontendStage.from_model_dir(info.model_dir, cache_dir=text_cache_dir)
        if engine == "torch":
            gpt = TorchGPTStage.from_checkpoint(info, dev, dtype, limits=reference_limits)
        else:
            from indextts.vllm.stage import VLLMGPTStage
            gpt = VLLMGPTStage.from_checkpoint(info, dev, dtype, limits=reference_limits,
                                               gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)
        vocoder = VocoderEngineStage.from_checkpoint(info, dev, vocoder_dtype(dev, dtype), limits=reference_limits)
        return cls(info, frontend, gpt, vocoder)

    def voice(self, references: VoiceLike, weights: Optional[Sequence[float]] = None, name: str = "") -> VoiceSpec:
        """A voice from one or more reference recordings (several are averaged, optionally weighted)."""
        if isinstance(references, VoiceSpec):
            return references
        refs = [references] if isinstance(references, (str, Path)) else list(references)
        if not refs:
            raise VoiceError("a voice needs at least one reference recording")
        for ref in refs:
            if not Path(ref).is_file():
                raise VoiceError(f"reference audio not found: {ref}")
        try:
            return VoiceSpec(tuple(str(Path(r).resolve()) for r in refs),
                             tuple(float(w) for w in weights) if weights is not None else None, name)
        except ValueError as e:
            raise VoiceError(str(e)) from e

    def stream(self, text: str, voice: VoiceLike, options: SamplingOptions = SamplingOptions(),
               max_tokens_per_segment: Optional[int] = None) -> Iterator[AudioChunk]:
        """Audio per segment (float32 samples at 24 kHz) as soon as each segment is ready.

        `max_tokens_per_segment` defaults to 120, or the checkpoint's `max_text_tokens` if smaller."""
        max_tokens = self._max_tokens(max_tokens_per_segment)
        agen = self.synthesizer.stream(text, self.voice(voice), options, max_tokens)
        return self._loop.iterate(agen)

    def synthesize(self, text: str, voice: VoiceLike, options: SamplingOptions = SamplingOptions(),
                   max_tokens_per_segment: Optional[int] = None) -> torch.Tensor:
        """The whole utterance as int16 samples `[n]` at 24 kHz (the original's output conversion)."""
        chunks = [c.samples for c in self.stream(text, voice, options, max_tokens_per_segment)]
        return float_to_int16(torch.cat(chunks)) if chunks else torch.zeros(0, dtype=torch.int16)

    def run(self, coro):
        """Run a coroutine on this pipeline's event loop, where its async stages live (e.g. many
        `self.synthesizer.stream(...)` calls gathered at once), and return its result."""
        return self._loop.run(coro)

    def _max_tokens(self, n: Optional[int]) -> int:
        limit = self.info.config.gpt.max_segment_tokens
        if n is None:
            return min(DEFAULT_MAX_TOKENS_PER_SEGMENT, limit)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limit:
            raise OptionsError(f"max_tokens_per_segment must be an integer in [1, {limit}] for this "
                               f"checkpoint (its text position table, less one), got {n!r}")
        return n

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def close(self) -> None:
        for stage in (self.gpt, self.vocoder):
            close = getattr(stage, "close", None)
            if close:
                close()
        self._loop.stop()

    def __enter__(self) -> "IndexTTS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
