"""The latent pass inside vLLM's worker: `worker_extension_cls` + `AsyncLLM.collective_rpc`.

The vocoder needs the teacher-forced pass's hidden states, which differ from the ones produced
while generating (the original feeds code k at mel position k + 1 there, k + 2 while
generating), and vLLM returns tokens, not hidden states. The pass runs where the weights already
are: vLLM's documented `worker_extension_cls` engine argument mixes this class into its worker,
and `collective_rpc("indextts_latents", ...)` (a whole segment) or
`collective_rpc("indextts_latent_streams", ...)` (chunk by chunk, incrementally:
`indextts.vllm.latents`) calls it between engine steps. No second copy of the weights exists
anywhere.

The engine core waits for the call, so decoding pauses while it runs (what that costs:
docs/benchmarks.md). The pass runs eagerly (no CUDA graph), so its time is mostly kernel
launches; capturing it in a graph or scheduling it as vLLM prefill work is the next step.

Tensors cross the RPC as raw bytes plus shape and dtype: vLLM decodes utility-call arguments
without type information, so a tensor nested in them would arrive as its msgpack encoding.
Latents are made float32 on the GPU before they travel: sent in bfloat16 (half the bytes), the
caller's conversion ran through torch's CPU thread pool in the process next to vLLM's busy engine
(see `indextts.vllm.prompt.PromptBuilder` for what that costs there).
"""

from __future__ import annotations

import time

import torch

EXTENSION_CLASS = "indextts.vllm.worker.LatentWorkerExtension"
LATENTS_METHOD = "indextts_latents"
STREAM_METHOD = "indextts_latent_streams"
OPEN_STREAMS_METHOD = "indextts_open_latent_streams"

Wire = tuple[bytes, list[int], str]

# Raw byte views for the dtypes a model runs in (numpy has no bfloat16: it travels as int16 bits).
_WIRE_VIEW = {torch.float32: torch.float32, torch.float16: torch.float16, torch.bfloat16: torch.int16}


def to_wire(t: torch.Tensor) -> Wire:
    """A float tensor -> (its bytes, shape, dtype name), in its own precision (float32 if other)."""
    t = t.detach().cpu()
    if t.dtype not in _WIRE_VIEW:
        t = t.float()
    return t.contiguous().view(_WIRE_VIEW[t.dtype]).numpy().tobytes(), list(t.shape), str(t.dtype).split(".")[-1]


def from_wire(wire: Wire) -> torch.Tensor:
    """The inverse of `to_wire`, as float32."""
    data, shape, dtype_name = wire
    dtype = getattr(torch, dtype_name)
    return torch.frombuffer(bytearray(data), dtype=_WIRE_VIEW[dtype]).view(dtype).reshape(shape).float()


class LatentWorkerExtension:
    """Mixed into vLLM's worker class by vLLM; `self` is the worker."""

    def indextts_latents(self, items: list) -> tuple[list[Wire], float]:
        """items: (prompt embeddings [P, D] on the wire, codes [N]) per segment
        -> (latents [N, D] on the wire per item, seconds spent here)."""
        started = time.perf_counter()
        model = self.get_model()
        todo = [(i, from_wire(embeds), list(codes)) for i, (embeds, codes) in enumerate(items) if len(codes)]
        out = [to_wire(torch.zeros(0, model.config.hidden_size)) for _ in items]
        if todo:
            for (i, _, _), latents in zip(todo, model.teacher_forced_latents([(e, c) for _, e, c in todo])):
                out[i] = to_wire(latents.float())
        return out, time.perf_counter() - started      # to_wire copies to the CPU: the GPU is done

    def indextts_latent_streams(self, items: list, releases: list) -> tuple[list[Wire], float]:
        """Chunked requests' latents, incrementally (`indextts.vllm.latents.LatentStreams`).
        items: (request key, prompt embeddings on the wire on its first call else None, its next
        codes, whether they are its last); releases: keys of requests that ended early
        -> (latents [n, D] on the wire per item, seconds spent here)."""
        started = time.perf_counter()
        streams = getattr(self, "_indextts_streams", None)
        if streams is None:
            from indextts.vllm.latents import LatentStreams

            config = getattr(self, "vllm_config", None)     # WorkerBase keeps it (0.26.0, 0.27.1)
            most = config.scheduler_config.max_num_seqs if config is not None else 128
            streams = self._indextts_streams = LatentStreams(self.get_model(), max_states=2 * most)
        streams.release(releases)
        latents = streams.extend([(key, None if embeds is None else from_wire(embeds), list(codes), bool(last))
                                  for key, embeds, codes, last in items])
        return [to_wire(x.float()) for x in latents], time.perf_counter() - started

    def indextts_open_latent_streams(self) -> int:
        """Latent streams open in this worker (diagnostics: a stream outliving its request leaks)."""
        streams = getattr(self, "_indextts_streams", None)
        return 0 if streams is None else len(streams.states)
