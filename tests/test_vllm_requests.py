"""The vLLM engine under concurrent, sampled and cancelled requests (the session's `engine`)."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

pytest.importorskip("vllm")

from indextts.errors import OptionsError, TextError, VoiceError  # noqa: E402
from indextts.gpt.generation import prompt_sequence  # noqa: E402
from indextts.types import SamplingOptions  # noqa: E402
from vllm_support import LATENT_ATOL, collect, greedy  # noqa: E402


# -- concurrency, options, cancellation --------------------------------------------------------------

def _texts(sentences) -> list[tuple[int, ...]]:
    """16 different texts from the golden sentences: prefixes and suffixes of several lengths."""
    texts = []
    for n in range(16):
        ids = sentences[n % 3]
        cut = 1 + n // 3
        texts.append(tuple(ids[:-cut] if n % 2 else ids[cut:]))
    assert len(set(texts)) == 16
    return texts


def test_sixteen_concurrent_greedy_requests_equal_their_sequential_results(engine, loop, expected, sentences):
    texts = _texts(sentences)
    conds = [expected["ref_a.cond_latents"], expected["ref_b.cond_latents"]]
    jobs = [(conds[n % 2], texts[n], greedy("rp10" if n % 3 else "rp1")) for n in range(16)]
    sequential = [loop.run(collect(engine, *job)) for job in jobs]

    async def together():
        return await asyncio.gather(*(collect(engine, *job) for job in jobs))
    peak = 0

    async def together_watched():
        nonlocal peak
        jobs = asyncio.ensure_future(together())
        while not jobs.done():
            peak = max(peak, engine.load.running)
            await asyncio.sleep(0.001)
        return await jobs
    concurrent = loop.run(together_watched())
    assert peak > 8, "the requests did not run as one batch"
    for (raw_s, fin_s), (raw_c, fin_c) in zip(sequential, concurrent):
        assert raw_c == raw_s
        assert fin_c.codes.tolist() == fin_s.codes.tolist()
        torch.testing.assert_close(fin_c.latents, fin_s.latents, atol=1e-5, rtol=0)   # batched latent pass


def test_concurrent_latent_passes_share_one_worker_call(engine, loop, expected, sentences):
    prompts = [engine.prompt(expected[f"ref_{'ab'[n % 2]}.cond_latents"], sentences[n % 3]) for n in range(6)]
    codes = [expected[f"s{n % 3}.ref_{'ab'[n % 2]}.rp10.codes"].flatten().tolist() for n in range(6)]

    async def together():
        return await asyncio.gather(*(engine.latents(p, c) for p, c in zip(prompts, codes)))
    calls = []
    worker_call = engine.llm.collective_rpc

    async def counted(*args, **kwargs):
        calls.append(args[0])
        return await worker_call(*args, **kwargs)
    engine.llm.collective_rpc = counted
    try:
        batched = loop.run(together())
    finally:
        del engine.llm.collective_rpc
    assert len(calls) == 1
    for n, lat in enumerate(batched):
        torch.testing.assert_close(lat, expected[f"s{n % 3}.ref_{'ab'[n % 2]}.rp10.latents"][0], atol=LATENT_ATOL, rtol=0)
        torch.testing.assert_close(lat, loop.run(engine.latents(prompts[n], codes[n])), atol=1e-5, rtol=0)


def test_options_and_seeds_do_not_leak_between_requests(engine, loop, expected, sentences):
    cond = expected["ref_a.cond_latents"]
    sampled = [SamplingOptions(temperature=1.0, top_k=30, top_p=0.8, repetition_penalty=10.0, seed=s, max_codes=60)
               for s in (11, 12, 13)]
    alone = [loop.run(collect(engine, cond, sentences[0], o))[0] for o in sampled]
    again = loop.run(collect(engine, cond, sentences[0], sampled[0]))[0]
    assert again == alone[0], "the same seed must reproduce its codes"
    assert len({tuple(a) for a in alone}) == 3, "different seeds gave the same codes"

    async def mixed():     # seeded, greedy and unseeded high-temperature requests side by side
        jobs = [collect(engine, cond, sentences[0], o) for o in sampled]
        jobs += [collect(engine, cond, sentences[0], greedy("rp10"))]
        jobs += [collect(engine, cond, sentences[n % 3], SamplingOptions(temperature=2.0, top_k=0, top_p=1.0,
                                                                         repetition_penalty=1.0, max_codes=60))
                 for n in range(4)]
        return await asyncio.gather(*jobs)
    results = [raw for raw, _ in loop.run(mixed())]
    assert results[:3] == alone
    assert results[3] == expected["s0.ref_a.rp10.codes_raw"].flatten().tolist()


@pytest.fixture(scope="module")
def reference_scores(torch_gpt):
    """Scores the original would choose from at every step of a given code sequence."""
    @torch.no_grad()
    def scores(cond, ids, codes_raw: list[int], rp: float) -> torch.Tensor:
        x = prompt_sequence(torch_gpt, cond, ids)                  # [1, P + 1, D]
        n = len(codes_raw)
        if n > 1:                                                  # code k is fed at mel position k + 2
            mel = torch_gpt.embed_mel(torch.tensor(codes_raw[:-1]).unsqueeze(0), torch.arange(2, n + 1))
            x = torch.cat([x, mel], dim=1)
        logits = torch_gpt.logits(torch_gpt(x)[0, -n:])            # [n, V]: row k chooses code k
        out = logits.clone()
        for k in range(n):
            seen = torch.tensor([1, 8192] + codes_raw[:k])
            row = logits[k, seen]
            out[k, seen] = torch.where(row < 0, row * rp, row / rp)
        return out
    return scores


def _outside_top_k(scores: torch.Tensor, codes: list[int], k: int) -> int:
    kth = torch.topk(scores, k, dim=-1).values[:, -1]
    chosen = scores[torch.arange(len(codes)), torch.tensor(codes)]
    return int((chosen < kth - 1e-4).sum())


@pytest.mark.parametrize("rp", [1.0, 10.0])
def test_sampled_codes_stay_within_top_k(engine, loop, expected, sentences, reference_scores, rp):
    """Hot sampling (temperature 2, no top-p) with top-k 3: every code must be one of the three
    best by the reference's penalised scores; without top-k the same runs leave that set."""
    def run(top_k: int):
        outside = total = 0
        for n in range(6):
            cond, ids = expected[("ref_a", "ref_b")[n % 2] + ".cond_latents"], sentences[n % 3]
            options = SamplingOptions(temperature=2.0, top_k=top_k, top_p=1.0, repetition_penalty=rp,
                                      seed=100 + n, max_codes=60)
            raw, _ = loop.run(collect(engine, cond, ids, options))
            outside += _outside_top_k(reference_scores(cond, ids, raw, rp), raw, 3)
            total += len(raw)
        return outside, total
    outside, total = run(3)
    assert total >= 100 and outside == 0
    outside_without, _ = run(0)
    assert outside_without > 0, "top-k 0 never left the top 3: the check above could not fail"


def _wait_until_idle(engine) -> None:
    deadline = time.monotonic() + 10
    while engine.num_running_requests() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_closing_the_stream_aborts_the_request(engine, loop, expected, sentences):
    cond = expected["ref_a.cond_latents"]
    long = greedy("rp1")          # with ignore_stop: 60 codes unless aborted

    async def cancel_while_running(close_generator: bool):
        steps = engine.load.steps
        gen = engine.generate(cond, sentences[0], long, ignore_stop=True)
        task = asyncio.ensure_future(gen.__anext__())
        while engine.load.steps - steps < 3:     # running, and nothing has been yielded yet
            await asyncio.sleep(0.005)
        assert engine.num_running_requests() >= 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if close_generator:
            await gen.aclose()
        return steps

    for close_generator in (False, True):
        steps_before = loop.run(cancel_while_running(close_generator))
        _wait_until_idle(engine)
        assert engine.num_running_requests() == 0
        assert engine.num_active_streams() == 0
        assert engine.load.steps - steps_before < 40, "the request ran on after the abort"
    # the engine goes on serving
    raw, _ = loop.run(collect(engine, cond, sentences[0], greedy("rp10")))
    assert raw == expected["s0.ref_a.rp10.codes_raw"].flatten().tolist()


def test_generate_is_its_parts_and_runs_to_max_codes_on_request(engine, loop, expected, sentences):
    """`generate` yields what `collect` builds from the engine's parts (one chunk: the segment);
    `ignore_stop` runs a request to `max_codes`."""
    cond = expected["ref_b.cond_latents"]

    async def generated(**kw):
        return [c async for c in engine.generate(cond, sentences[2], greedy("rp10"), **kw)]
    (chunk,) = loop.run(generated())
    _, parts = loop.run(collect(engine, cond, sentences[2], greedy("rp10")))
    assert chunk.final and chunk.stopped == parts.stopped and chunk.start == 0
    assert torch.equal(chunk.codes, parts.codes)
    torch.testing.assert_close(chunk.latents, parts.latents, atol=0, rtol=0)
    torch.testing.assert_close(chunk.latents, expected["s2.ref_b.rp10.latents"][0], atol=LATENT_ATOL, rtol=0)
    (forced,) = loop.run(generated(ignore_stop=True))
    assert len(forced.codes) == 60 and not forced.stopped and forced.latents.shape[0] == 60


def test_a_failed_warm_up_is_retried_not_kept(loop):
    from indextts.stages.gpt import EngineGPTStage

    class FlakyEngine:
        calls = 0

        async def warm_up(self):
            FlakyEngine.calls += 1
            if FlakyEngine.calls == 1:
                raise RuntimeError("transient")

    stage = EngineGPTStage(FlakyEngine(), conditioning=None, cfg=None)
    with pytest.raises(RuntimeError, match="transient"):
        loop.run(stage.warm_up())
    loop.run(stage.warm_up())
    loop.run(stage.warm_up())
    assert FlakyEngine.calls == 2      # retried once after the failure, then kept


def test_bad_requests_raise_before_reaching_vllm(engine, loop, expected, sentences):
    cond = expected["ref_a.cond_latents"]
    with pytest.raises(OptionsError):
        loop.run(collect(engine, cond, sentences[0], SamplingOptions(max_codes=61)))
    with pytest.raises(OptionsError):
        loop.run(collect(engine, cond, sentences[0], SamplingOptions(temperature=2.5)))
    with pytest.raises(OptionsError, match="beam search"):
        loop.run(collect(engine, cond, sentences[0], SamplingOptions.deterministic(num_beams=3)))
    with pytest.raises(TextError):
        loop.run(collect(engine, cond, [5] * 81, greedy("rp10")))
    with pytest.raises(VoiceError):
        loop.run(collect(engine, cond[:, :16], sentences[0], greedy("rp10")))
    assert engine.num_active_streams() == 0
