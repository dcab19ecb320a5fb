"""The vLLM engine on a chunk schedule: codes streamed as vLLM samples them, latents from the
incremental pass in vLLM's worker (`indextts.vllm.latents`), against the golden data, the
engine's whole-segment path, concurrency and cancellation (the session's `engine`)."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

pytest.importorskip("vllm")

from indextts.types import ChunkSchedule, SamplingOptions, Segment  # noqa: E402
from vllm_support import LATENT_ATOL, RUNS, greedy  # noqa: E402

from conftest import check_layout, leave_stream  # noqa: E402

SCHEDULES = [ChunkSchedule((1,)), ChunkSchedule((5, 17)), ChunkSchedule.streaming()]


async def chunks_of(engine, cond, ids, options, schedule, **kw):
    return [c async for c in engine.generate(cond, ids, options, schedule=schedule, **kw)]


def _joined(chunks):
    return torch.cat([c.codes for c in chunks]).tolist(), torch.cat([c.latents for c in chunks])


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[str(s) for s in SCHEDULES])
@pytest.mark.parametrize("i,ref,rp", RUNS[::3], ids=[f"s{i}.{r}.{p}" for i, r, p in RUNS[::3]])
def test_chunks_join_into_the_golden_codes_and_latents(engine, loop, expected, expected_meta, sentences,
                                                       i, ref, rp, schedule):
    chunks = loop.run(chunks_of(engine, expected[f"{ref}.cond_latents"], Segment(tuple(sentences[i])),
                                greedy(rp), schedule))
    check_layout(chunks, schedule, engine.config.model_dim)
    codes, latents = _joined(chunks)
    key = f"s{i}.{ref}.{rp}"
    assert codes == expected[f"{key}.codes"].flatten().tolist()
    assert chunks[-1].stopped == expected_meta["sentences"][i]["runs"][f"{ref}.{rp}"]["stop_produced"]
    torch.testing.assert_close(latents, expected[f"{key}.latents"][0], atol=LATENT_ATOL, rtol=0)


def test_seeded_sampled_chunks_equal_the_whole_segment(engine, loop, expected, sentences):
    """The same seed gives the same codes streamed as sent at the end, and the incremental
    latents equal the one-pass latents of those codes."""
    cond = expected["ref_b.cond_latents"]
    options = SamplingOptions(seed=7, max_codes=60, repetition_penalty=10.0)
    whole = loop.run(chunks_of(engine, cond, sentences[1], options, ChunkSchedule.whole(), ignore_stop=True))
    chunked = loop.run(chunks_of(engine, cond, sentences[1], options, ChunkSchedule((3, 8)), ignore_stop=True))
    assert len(whole) == 1 and len(chunked) > 5
    codes, latents = _joined(chunked)
    assert codes == whole[0].codes.tolist() and len(codes) == 60
    torch.testing.assert_close(latents, whole[0].latents, atol=LATENT_ATOL, rtol=0)


def test_concurrent_chunks_share_worker_calls_and_streams_close(engine, loop, expected, sentences):
    cond = expected["ref_a.cond_latents"]
    calls = []
    queue = engine._stream_queue
    real = queue._run

    async def counted(items):
        calls.append(len(items))
        return await real(items)

    async def together():
        return await asyncio.gather(*(chunks_of(engine, cond, sentences[n % 3], greedy("rp10"), ChunkSchedule((4,)),
                                                ignore_stop=True) for n in range(8)))
    queue._run = counted
    try:
        results = loop.run(together())
    finally:
        queue._run = real
    alone = loop.run(chunks_of(engine, cond, sentences[0], greedy("rp10"), ChunkSchedule((4,)), ignore_stop=True))
    for n, chunks in enumerate(results):
        assert len(chunks) == 15                      # 60 codes in chunks of 4
        if n % 3 == 0:
            torch.testing.assert_close(_joined(chunks)[1], _joined(alone)[1], atol=LATENT_ATOL, rtol=0)
    assert max(calls) > 1, calls                      # chunks of several requests went in one call
    assert sum(calls) == 8 * 15
    assert loop.run(engine.open_latent_streams()) == 0


@pytest.mark.parametrize("how", ["close", "cancel"])
def test_leaving_mid_segment_aborts_the_request_and_frees_its_latent_stream(engine, loop, expected, sentences, how):
    cond = expected["ref_a.cond_latents"]
    long = greedy("rp1")          # with ignore_stop: 60 codes unless aborted

    async def leave_after_two_chunks():
        steps = engine.load.steps
        gen = engine.generate(cond, sentences[0], long, ignore_stop=True, schedule=ChunkSchedule((4,)))
        first = [await gen.__anext__(), await gen.__anext__()]
        assert engine.num_running_requests() >= 1 and await engine.open_latent_streams() == 1
        await leave_stream(gen, how)
        return first, steps

    first, steps = loop.run(leave_after_two_chunks())
    assert [len(c.codes) for c in first] == [4, 4]

    async def settled():
        for _ in range(400):
            if engine.num_running_requests() == 0 and await engine.open_latent_streams() == 0:
                return True
            await asyncio.sleep(0.01)
        return False
    assert loop.run(settled()), "the request or its latent stream outlived the consumer"
    assert engine.load.steps - steps < 40, "the request ran on after the abort"
    assert engine.num_active_streams() == 0


def test_segments_reach_vllm_with_their_deadline_as_priority(engine, loop, expected, sentences):
    """Earliest deadline first: the engine runs vLLM's priority scheduling and hands each request
    its segment's deadline (ms); a segment without one is due now."""
    from indextts.vllm.engine import engine_args
    from vllm_support import TINY

    assert engine_args(TINY).scheduling_policy == "priority"
    seen = []
    real = engine.llm.generate

    def spying(*args, **kwargs):
        seen.append(kwargs.get("priority"))
        return real(*args, **kwargs)
    engine.llm.generate = spying
    cond = expected["ref_a.cond_latents"]
    try:
        for schedule in (ChunkSchedule.whole(), ChunkSchedule((8,))):
            loop.run(chunks_of(engine, cond, Segment(tuple(sentences[0]), deadline=1234.5678), greedy("rp10"),
                               schedule))
        before = time.time()
        loop.run(chunks_of(engine, cond, Segment(tuple(sentences[0])), greedy("rp10"), ChunkSchedule((8,))))
    finally:
        del engine.llm.generate
    assert seen[:2] == [1234567, 1234567]
    assert before * 1000 - 1 <= seen[2] <= time.time() * 1000
