"""vLLM's scheduler, minus a per-step multimodal check that cannot find anything after the prompt.

Every step, vLLM's scheduler asks each running request that has multimodal items which of them
overlap the tokens it is about to compute (`Scheduler._try_schedule_encoder_inputs`: two
bisections over the items, a loop, four return values). An IndexTTS request's one item is its
prompt rows, so from its first generated code on the answer is always "none", yet the question
costs host time per running request per step, which stock vLLM running a plain GPT-2 does not
pay (figures in docs/benchmarks.md).

`make_scheduler` is what our engine names as vLLM's `scheduler_cls` (the engine argument
`--scheduler-cls`, which vLLM calls with the scheduler's keyword arguments). It builds the
scheduler vLLM would have built itself (`AsyncScheduler` with async scheduling, `Scheduler`
without) with that one question answered without work when the request's computed tokens are
past the end of its last item: there the stock method returns (no items, the same token count,
the same budget, no external loads) for every model that is not encoder-decoder, and this one
returns the same. Everywhere else the stock method runs.

vLLM documents the scheduler interface as not public (it logs so once when a custom class is
named), so the override is checked against the installed vLLM: if its scheduler has no such
method with the parameters this was written for (vLLM 0.26.0 and 0.27.1), the stock scheduler
is used, with a warning, and nothing else changes.
"""

from __future__ import annotations

import inspect
import logging
from functools import lru_cache

logger = logging.getLogger(__name__)

QUALNAME = "indextts.vllm.scheduler.make_scheduler"
_METHOD = "_try_schedule_encoder_inputs"
_PARAMETERS = ("self", "request", "num_computed_tokens", "num_new_tokens", "encoder_compute_budget",
               "shift_computed_tokens")


def make_scheduler(*, vllm_config, **kwargs):
    """vLLM's scheduler for this configuration, with the post-prompt check skipped (module doc)."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    base = AsyncScheduler if vllm_config.scheduler_config.async_scheduling else Scheduler
    return skipping_scheduler(base)(vllm_config=vllm_config, **kwargs)


@lru_cache(maxsize=None)
def skipping_scheduler(base: type) -> type:
    """`base` with `_try_schedule_encoder_inputs` answered at once past a request's last item;
    `base` itself when its method is not the one this was written for."""
    stock = getattr(base, _METHOD, None)
    if stock is None or tuple(inspect.signature(stock).parameters) != _PARAMETERS:
        logger.warning("vLLM's %s has no %s%s; using it unchanged (each running request costs a "
                       "few microseconds more per step)", base.__name__, _METHOD, _PARAMETERS)
        return base

    def _try_schedule_encoder_inputs(self, request, num_computed_tokens, num_new_tokens,
                                     encoder_compute_budget, shift_computed_tokens=0):
        if not self.is_encoder_decoder and request.mm_features:
            last = request.mm_features[-1].mm_position     # sorted by offset, non-overlapping
            if num_computed_tokens >= last.offset + last.length:
                return [], num_new_tokens, encoder_compute_budget, []
        return base._try_schedule_encoder_inputs(self, request, num_computed_tokens, num_new_tokens,
                                                 encoder_compute_budget, shift_computed_tokens)

    return type(f"PostPrompt{base.__name__}", (base,), {_METHOD: _try_schedule_encoder_inputs,
                                                        "__module__": __name__})
