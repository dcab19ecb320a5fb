"""A segment as several CodeChunks (issue 18): the chunk schedule, streaming silence shrinking,
and the PyTorch engine yielding chunks with exact latents while it generates."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

import indextts.gpt.generation as generation
from indextts.checkpoint import CheckpointInfo, load_gpt
from indextts.errors import OptionsError
from indextts.gpt.generation import KEEP_SILENT_RUN, SILENT_CODE, SilenceShrinker, compute_latents, shrink_silence
from indextts.stages.conditioning import VoiceConditioner
from indextts.stages.gpt_torch import TorchEngine, TorchGPTStage
from indextts.types import ChunkSchedule, SamplingOptions, Segment, VoiceSpec

from conftest import TINY, check_layout, leave_stream

STOP = 8193
ATOL = 1e-4            # latents, as tests/golden/README.md recommends (and test_gpt.py uses)
MAX_CODES = 60         # the tiny checkpoint's max_mel_tokens
SCHEDULES = [ChunkSchedule.whole(), ChunkSchedule((1,)), ChunkSchedule((2, 5)), ChunkSchedule((8, 24)),
             ChunkSchedule((3,))]
# ref_a: every rp10 run stops; every rp1 run runs to 60 codes and is shrunk by the silence rule
RUNS = [(i, p) for i in range(3) for p in ("rp10", "rp1")]
PENALTIES = {"rp1": 1.0, "rp10": 10.0}


@pytest.fixture(scope="module")
def model():
    return load_gpt(CheckpointInfo.from_dir(TINY))


@pytest.fixture(scope="module")
def cond(model, expected):
    with torch.no_grad():
        return model.get_conditioning(expected["ref_a.mel"])


@pytest.fixture(scope="module")
def engine(model):
    eng = TorchEngine(model, max_workers=4)
    yield eng
    eng.close()


def collect(gen) -> list:
    async def drain():
        return [chunk async for chunk in gen]
    return asyncio.run(drain())


def greedy(rp: float = 10.0, **kw) -> SamplingOptions:
    return SamplingOptions.deterministic(repetition_penalty=rp, max_codes=MAX_CODES, **kw)


# -- schedule ------------------------------------------------------------------------------------

def test_schedule_sizes_repeat_the_last_and_bad_sizes_are_rejected():
    s = ChunkSchedule((8, 24, 48))
    assert [s.size(k) for k in range(5)] == [8, 24, 48, 48, 48] and not s.is_whole
    assert ChunkSchedule() == ChunkSchedule.whole() and ChunkSchedule.whole().size(3) is None
    assert ChunkSchedule([2, 5]).sizes == (2, 5)
    for bad in [(), (0,), (4, -1), (1.5,), (True,), "8", 8]:
        with pytest.raises(OptionsError):
            ChunkSchedule(bad)


# -- streaming silence shrinking -----------------------------------------------------------------

def random_row(rng: random.Random) -> list[int]:
    n = rng.choice([0, 1, 5, 20, 40, 60, 90])
    heavy = rng.choice([0.3, 0.6, 0.9])
    row = [SILENT_CODE if rng.random() < heavy else rng.choice([7, 100, 8000]) for _ in range(n)]
    for _ in range(rng.choice([0, 0, 1, 2])):        # stop codes anywhere, the first cuts the row
        row.insert(rng.randint(0, len(row)), STOP)
    return row


def shrink_streaming(row: list[int], step: int) -> tuple[list[int], bool]:
    shrinker = SilenceShrinker(STOP)
    out = []
    for a in range(0, len(row), step):
        out += shrinker.push(row[a:a + step])
    return out + shrinker.finish(), shrinker.stopped


def test_released_codes_equal_shrink_silence_for_random_rows():
    rng = random.Random(18)
    rows = [random_row(rng) for _ in range(1500)]
    rows += [[SILENT_CODE] * n + [5] + [SILENT_CODE] * m + tail
             for n in (10, 11, 30, 31) for m in (0, 19, 20, 21) for tail in ([], [STOP], [STOP, SILENT_CODE])]
    shrunk_some = 0
    for row in rows:
        want = shrink_silence(torch.tensor(row, dtype=torch.long), STOP).tolist()
        shrunk_some += want != row[:row.index(STOP) if STOP in row else len(row)]
        for step in (1, 2, 3, 7, 1000):
            got, stopped = shrink_streaming(row, step)
            assert got == want, (row, step)
            assert stopped == (STOP in row)
    assert shrunk_some > 100          # the rule fired often enough to be tested


def test_codes_are_released_as_soon_as_they_are_final():
    shrinker = SilenceShrinker(STOP)
    assert shrinker.push([3, 4]) == [3, 4]                              # no silence: final at once
    assert shrinker.push([SILENT_CODE] * 12) == [SILENT_CODE] * KEEP_SILENT_RUN   # the excess 2 wait
    assert shrinker.push([9]) == []                                       # after a held code: waits
    # 19 more silent codes make 31 > 30: the rule drops the 2 excess, the run of 19 keeps 10
    assert shrinker.push([SILENT_CODE] * 19) == [9] + [SILENT_CODE] * KEEP_SILENT_RUN
    assert shrinker.push([SILENT_CODE, 6]) == [6]                         # decided: no holding now
    assert shrinker.finish() == []
    held = SilenceShrinker(STOP)
    assert held.push([SILENT_CODE] * 11 + [STOP, 5]) == [SILENT_CODE] * 10
    assert held.finish() == [SILENT_CODE] and held.stopped                # 11 <= 30: all kept


# -- the PyTorch engine in chunks ----------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES, ids=[str(s.sizes) for s in SCHEDULES])
def test_chunks_concatenate_to_the_golden_codes_and_latents(engine, model, cond, expected, expected_meta,
                                                            schedule):
    for i, p in RUNS:
        key = f"s{i}.ref_a.{p}"
        segment = Segment(tuple(expected_meta["sentences"][i]["ids"]))
        chunks = collect(engine.generate(cond, segment, greedy(PENALTIES[p]), schedule=schedule))
        check_layout(chunks, schedule, model.cfg.model_dim)
        assert torch.cat([c.codes for c in chunks]).tolist() == expected[f"{key}.codes"][0].tolist(), key
        torch.testing.assert_close(torch.cat([c.latents for c in chunks]), expected[f"{key}.latents"][0],
                                   atol=ATOL, rtol=0)
        assert chunks[-1].stopped == expected_meta["sentences"][i]["runs"][f"ref_a.{p}"]["stop_produced"]


def test_beam_search_is_cut_into_chunks_after_the_search(engine, model, cond, expected, expected_meta):
    ids = tuple(expected_meta["sentences"][1]["ids"])
    schedule = ChunkSchedule((3,))
    chunks = collect(engine.generate(cond, Segment(ids), greedy(num_beams=3), schedule=schedule))
    check_layout(chunks, schedule, model.cfg.model_dim)
    want = shrink_silence(expected["s1.ref_a.beam3.codes_raw"][0], STOP)
    assert torch.equal(torch.cat([c.codes for c in chunks]), want) and chunks[-1].stopped
    torch.testing.assert_close(torch.cat([c.latents for c in chunks]), compute_latents(model, cond, ids, want),
                               atol=1e-5, rtol=0)


def test_first_chunk_arrives_while_the_segment_is_still_generating(engine, cond, counted_codes):
    schedule = ChunkSchedule((8,))
    produced_at = []

    async def run():
        chunks = []
        async for chunk in engine.generate(cond, Segment((3, 160, 26, 225, 99)), greedy(), ignore_stop=True,
                                           schedule=schedule):
            produced_at.append(len(counted_codes))
            chunks.append(chunk)
        return chunks
    chunks = asyncio.run(run())
    assert [len(c.codes) for c in chunks] == [8] * 7 + [4]
    assert torch.cat([c.codes for c in chunks]).tolist() == counted_codes      # ignore_stop: codes as they came
    assert produced_at[0] < MAX_CODES // 2                                # long before the 60th code
    assert all(n < MAX_CODES for n in produced_at[:-1])


def test_the_engine_schedule_is_the_default_and_a_call_may_override_it(model, cond, expected, expected_meta):
    engine = TorchEngine(model, max_workers=2, schedule=ChunkSchedule((5,)))
    segment = Segment(tuple(expected_meta["sentences"][1]["ids"]))
    try:
        own = collect(engine.generate(cond, segment, greedy()))
        whole = collect(engine.generate(cond, segment, greedy(), schedule=ChunkSchedule.whole()))
    finally:
        engine.close()
    n = expected["s1.ref_a.rp10.codes"].size(-1)
    assert [len(c.codes) for c in own] == [5] * ((n - 1) // 5) + [(n - 1) % 5 + 1]
    assert len(whole) == 1 and torch.equal(torch.cat([c.codes for c in own]), whole[0].codes)


def test_the_torch_stage_passes_its_schedule_to_its_engine(model, expected_meta):
    stage = TorchGPTStage(model, VoiceConditioner(model), max_workers=2, schedule=ChunkSchedule((4,)))
    voice = VoiceSpec((str(TINY / "ref_a.wav"),))
    try:
        chunks = collect(stage.generate(voice, Segment(tuple(expected_meta["sentences"][2]["ids"])), greedy()))
    finally:
        stage.close()
    assert len(chunks) > 1 and all(len(c.codes) == 4 for c in chunks[:-1]) and chunks[-1].final


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_leaving_mid_segment_stops_the_worker(engine, cond, counted_codes, how):
    async def leave_after_first_chunk():
        gen = engine.generate(cond, Segment((3, 160, 26, 225, 99)), greedy(), ignore_stop=True,
                              schedule=ChunkSchedule((4, 40)))     # a second chunk comes much later
        first = await gen.__anext__()
        assert first.start == 0 and not first.final
        await leave_stream(gen, how, settle_s=0.02)
        left = len(counted_codes)                   # the generator returns only once the worker has stopped
        await asyncio.sleep(0.1)
        return left
    left = asyncio.run(leave_after_first_chunk())
    assert left == len(counted_codes) < MAX_CODES


def test_a_worker_error_reaches_the_consumer_after_the_chunks_before_it(engine, cond, monkeypatch):
    real = generation.stream_codes

    def failing(*args, **kwargs):
        for k, code in enumerate(real(*args, **kwargs)):
            if k == 10:
                raise ValueError("boom")
            yield code
    monkeypatch.setattr(generation, "stream_codes", failing)
    got = []

    async def run():
        async for chunk in engine.generate(cond, Segment((3, 160, 26)), greedy(), ignore_stop=True,
                                           schedule=ChunkSchedule((4,))):
            got.append(chunk)
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(run())
    assert [len(c.codes) for c in got] == [4, 4]


def test_a_segment_without_codes_is_one_empty_final_chunk(engine, model, cond, monkeypatch):
    monkeypatch.setattr(generation, "stream_codes", lambda *a, **k: iter([STOP]))
    (chunk,) = collect(engine.generate(cond, Segment((3, 160, 26)), greedy(), schedule=ChunkSchedule((4,))))
    assert chunk.final and chunk.stopped and chunk.start == 0 and chunk.codes.numel() == 0
    assert chunk.latents.shape == (0, model.cfg.model_dim) and chunk.latents.dtype == torch.float32
