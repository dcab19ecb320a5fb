"""The latent pass inside vLLM's worker: `worker_extension_cls` + `AsyncLLM.collective_rpc`.

The vocoder needs the teacher-forced pass's hidden states, which differ from the ones produced
while generating (the original feeds code k at mel position k + 1 there, k + 2 while
generating), and vLLM returns tokens, not hidden states. The pass runs where the weights already
are: vLLM's documented `worker_extension_cls` engine argument mixes this class into its worker,
and `collective_rpc("indextts_latents", ...)` calls it between engine steps. No second copy of
the weights exists anywhere.

Tensors cross the RPC as raw float32 bytes plus a shape: vLLM decodes utility-call arguments
without type information, so a tensor nested in them would arrive as its msgpack encoding.
"""

from __future__ import annotations

import time

import torch

EXTENSION_CLASS = "indextts.vllm.worker.LatentWorkerExtension"
LATENTS_METHOD = "indextts_latents"

Wire = tuple[bytes, list[int]]


def to_wire(t: torch.Tensor) -> Wire:
    """Any float tensor -> (float32 bytes, shape)."""
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return t.numpy().tobytes(), list(t.shape)


def from_wire(wire: Wire) -> torch.Tensor:
    data, shape = wire
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)


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
                out[i] = to_wire(latents)
        return out, time.perf_counter() - started      # to_wire copies to the CPU: the GPU is done
