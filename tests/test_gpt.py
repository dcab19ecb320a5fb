"""Golden parity and behaviour of the PyTorch GPT engine (indextts.gpt) on the tiny checkpoint."""

from __future__ import annotations

import copy
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from indextts.checkpoint import CheckpointInfo, load_gpt
from indextts.config import IndexTTSConfig
from indextts.errors import OptionsError, TextError, VoiceError
from indextts.gpt.beam_search import beam_search_codes, beam_search_hypotheses
from indextts.gpt.generation import (GenerationRequest, LatentPass, average_conditioning, compute_latents,
                                     encode_prompt, generate_codes, generate_codes_batch, prompt_sequence,
                                     remove_long_silence, stream_codes)
from indextts.gpt.model import UnifiedVoice
from indextts.gpt.sampling import CodeSampler, RepetitionPenalty, Temperature, TopK, TopP
from indextts.types import SamplingOptions

GOLDEN = Path(__file__).parent / "golden"
TINY = GOLDEN / "tiny"
REFS = ("ref_a", "ref_b")
PENALTIES = {"rp1": 1.0, "rp10": 10.0}
RUNS = [(i, r, p) for i in range(3) for r in REFS for p in PENALTIES]
ATOL = 1e-4
MAX_CODES = 60


@pytest.fixture(scope="module")
def model() -> UnifiedVoice:
    return load_gpt(CheckpointInfo.from_dir(TINY))


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(TINY / "expected" / "expected.safetensors")


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((TINY / "expected" / "expected.json").read_text())


@pytest.fixture(scope="module")
def conds(model, expected) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {r: model.get_conditioning(expected[f"{r}.mel"]) for r in REFS}


def text_ids(meta, i: int) -> list[int]:
    return meta["sentences"][i]["ids"]


def greedy(rp: float) -> SamplingOptions:
    return SamplingOptions(greedy=True, repetition_penalty=rp, max_codes=MAX_CODES)


# -- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_state_dict_matches_official_manifest(version):
    manifest = json.loads((GOLDEN / "manifests" / f"indextts-{version}.gpt.json").read_text())
    with torch.device("meta"):
        model = UnifiedVoice(IndexTTSConfig.preset(version).gpt)
    ours = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    assert list(ours) == [k["name"] for k in manifest["keys"]]
    for key in manifest["keys"]:
        assert list(ours[key["name"]].shape) == key["shape"], key["name"]
        assert (key["name"] in buffers) == (key["kind"] == "buffer"), key["name"]


# -- conditioning --------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", REFS)
def test_conformer_and_cond_latents_match_golden(model, expected, conds, ref):
    mel = expected[f"{ref}.mel"]
    with torch.no_grad():
        out, mask = model.conditioning_encoder(mel.transpose(1, 2), torch.tensor([mel.size(-1)]))
    torch.testing.assert_close(out, expected[f"{ref}.conformer_out"], atol=ATOL, rtol=0)
    assert torch.equal(mask, expected[f"{ref}.conformer_mask"])
    torch.testing.assert_close(conds[ref], expected[f"{ref}.cond_latents"], atol=ATOL, rtol=0)


def test_batched_conditioning_with_padding_equals_one_by_one(model, expected, conds):
    mels = [expected[f"{r}.mel"][0] for r in REFS]
    width = max(m.size(-1) for m in mels)
    batch = torch.stack([torch.nn.functional.pad(m, (0, width - m.size(-1)), value=-5.0) for m in mels])
    with torch.no_grad():
        out = model.get_conditioning(batch, torch.tensor([m.size(-1) for m in mels]))
    for i, r in enumerate(REFS):
        torch.testing.assert_close(out[i:i + 1], conds[r], atol=1e-5, rtol=0)


def test_average_conditioning(conds):
    a, b = conds["ref_a"], conds["ref_b"]
    torch.testing.assert_close(average_conditioning([a, b]), (a + b) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(average_conditioning([a, b], weights=[3, 1]), 0.75 * a + 0.25 * b, atol=1e-6, rtol=0)
    assert torch.equal(average_conditioning([a]), a)
    with pytest.raises(VoiceError):
        average_conditioning([])
    with pytest.raises(VoiceError):
        average_conditioning([a, b], weights=[0, 0])


# -- prompt and first step -----------------------------------------------------------------------

@pytest.mark.parametrize("i", range(3))
def test_prompt_and_first_step_match_golden(model, expected, meta, conds, i):
    ids = text_ids(meta, i)
    with torch.no_grad():
        prefix = model.prompt_embeddings(conds["ref_a"], ids)
    torch.testing.assert_close(prefix, expected[f"s{i}.ref_a.prompt_embeds"], atol=ATOL, rtol=0)
    prompt = encode_prompt(model, conds["ref_a"], ids)
    torch.testing.assert_close(prompt.start_logits, expected[f"s{i}.ref_a.first_step_logits"][0], atol=ATOL, rtol=0)
    sampler = CodeSampler(SamplingOptions(greedy=True, repetition_penalty=10.0), 8194, (1, 8192))
    scores = sampler.scores(prompt.start_logits)
    torch.testing.assert_close(scores, expected[f"s{i}.ref_a.first_step_scores_rp10"][0], atol=ATOL, rtol=0)
    changed = (scores != prompt.start_logits).nonzero().flatten().tolist()
    assert changed == [1, 8192]


# -- greedy generation and latents ---------------------------------------------------------------

@pytest.mark.parametrize("i,ref,rp", RUNS, ids=[f"s{i}.{r}.{p}" for i, r, p in RUNS])
def test_greedy_codes_and_latents_match_golden(model, expected, meta, conds, i, ref, rp):
    key = f"s{i}.{ref}.{rp}"
    ids = text_ids(meta, i)
    prompt = encode_prompt(model, conds[ref], ids)
    result = generate_codes(model, conds[ref], ids, greedy(PENALTIES[rp]), prompt=prompt)
    assert result.codes_raw.tolist() == expected[f"{key}.codes_raw"][0].tolist()
    assert result.stopped == meta["sentences"][i]["runs"][f"{ref}.{rp}"]["stop_produced"]
    assert result.codes.tolist() == expected[f"{key}.codes"][0].tolist()
    assert [result.codes.numel()] == expected[f"{key}.code_lens"].tolist()
    latents = compute_latents(model, conds[ref], ids, result.codes, prompt=prompt)
    torch.testing.assert_close(latents, expected[f"{key}.latents"][0], atol=ATOL, rtol=0)


def test_latents_equal_the_original_full_teacher_forced_pass(model, expected, meta, conds):
    """compute_latents reuses the prompt cache; the original runs [8192, codes, 8193] at mel
    positions 0..N+1 from scratch and drops the last two outputs. They must agree."""
    ids, codes = text_ids(meta, 1), expected["s1.ref_a.rp10.codes"][0]
    n = codes.numel()
    with torch.no_grad():
        mel = torch.cat([torch.tensor([8192]), codes, torch.tensor([8193])]).unsqueeze(0)
        seq = torch.cat([model.prompt_embeddings(conds["ref_a"], ids), model.embed_mel(mel, torch.arange(n + 2))], 1)
        full = model(seq)[0, -(n + 2):-2]
    torch.testing.assert_close(compute_latents(model, conds["ref_a"], ids, codes), full, atol=1e-5, rtol=0)
    assert compute_latents(model, conds["ref_a"], ids, codes[:0]).shape == (0, 32)


def test_latents_in_chunks_equal_the_whole_pass(model, expected, meta, conds):
    ids, codes = text_ids(meta, 1), expected["s1.ref_b.rp1.codes"][0]
    prompt = encode_prompt(model, conds["ref_b"], ids)
    whole = compute_latents(model, conds["ref_b"], ids, codes, prompt=prompt)
    stream = LatentPass(model, prompt, codes.numel())
    chunks = [stream.extend(codes[a:b]) for a, b in ((0, 1), (1, 1), (1, 7), (7, 20), (20, codes.numel()))]
    assert [c.size(0) for c in chunks] == [1, 0, 6, 13, codes.numel() - 20]
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole, expected["s1.ref_b.rp1.latents"][0], atol=ATOL, rtol=0)


def test_latent_comparison_detects_a_perturbed_weight(model, expected, meta, conds):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.gpt.h[1].mlp.c_proj.weight[3, 5] += 0.05
    codes = expected["s0.ref_a.rp10.codes"][0]
    latents = compute_latents(broken, conds["ref_a"], text_ids(meta, 0), codes)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(latents, expected["s0.ref_a.rp10.latents"][0], atol=ATOL, rtol=0)


def test_stream_yields_the_generated_codes_in_order(model, expected, meta, conds):
    codes = list(stream_codes(model, conds["ref_a"], text_ids(meta, 2), greedy(10.0)))
    assert codes == expected["s2.ref_a.rp10.codes_raw"][0].tolist()
    assert codes[-1] == 8193


def test_warns_when_no_stop_code_comes(model, meta, conds, caplog):
    with caplog.at_level(logging.WARNING, logger="indextts.gpt.generation"):
        result = generate_codes(model, conds["ref_a"], text_ids(meta, 0), greedy(1.0))
    assert not result.stopped and result.codes_raw.numel() == MAX_CODES
    assert any("no stop code" in r.getMessage() for r in caplog.records)


def test_ignore_stop_runs_to_max_codes(model, expected, meta, conds, caplog):
    options = SamplingOptions(greedy=True, repetition_penalty=10.0, max_codes=30)
    with caplog.at_level(logging.WARNING, logger="indextts.gpt.generation"):
        result = generate_codes(model, conds["ref_a"], text_ids(meta, 0), options, ignore_stop=True)
    golden = expected["s0.ref_a.rp10.codes_raw"][0].tolist()   # stops after 8 codes
    assert result.codes_raw.tolist()[:len(golden)] == golden
    assert result.codes_raw.numel() == 30 and torch.equal(result.codes, result.codes_raw)
    assert not result.stopped and not caplog.records


def test_batched_generation_equals_golden(model, expected, meta, conds):
    requests = [GenerationRequest(conds[r], text_ids(meta, i), greedy(PENALTIES[p])) for i, r, p in RUNS]
    results = generate_codes_batch(model, requests)
    for (i, r, p), result in zip(RUNS, results):
        assert result.codes_raw.tolist() == expected[f"s{i}.{r}.{p}.codes_raw"][0].tolist(), (i, r, p)


def test_end_to_end_segments_match_golden(model, expected, meta):
    """The e2e runs of the original's infer(): their per-segment ids and raw codes."""
    with torch.no_grad():
        voices = {f"{r}.wav": model.get_conditioning(expected[f"{r}.mel"]) for r in REFS}
    for run in meta["e2e"]:
        cond = voices[run["audio_prompt"]]
        options = greedy(run["repetition_penalty"])
        for segment in run["segments"]:
            result = generate_codes(model, cond, segment["text_ids"], options)
            assert result.codes_raw.tolist() == segment["codes_raw"]
            assert result.stopped == segment["stop_produced"]


# -- beam search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("i", range(3))
def test_beam_search_matches_golden(model, expected, meta, conds, i):
    options = SamplingOptions(repetition_penalty=10.0, max_codes=MAX_CODES)
    result = beam_search_codes(model, conds["ref_a"], text_ids(meta, i), options, num_beams=3)
    assert result.codes_raw.tolist() == expected[f"s{i}.ref_a.beam3.codes_raw"][0].tolist()
    run = meta["beam_search"]["runs"][i]
    hyps = beam_search_hypotheses(model, conds["ref_a"], text_ids(meta, i), options, num_beams=3)
    assert [codes for codes, _ in hyps] == [h["codes_raw"] for h in run["top3_hypotheses"]]
    assert [score for _, score in hyps] == pytest.approx([h["score"] for h in run["top3_hypotheses"]], abs=1e-3)


def test_beam_search_end_to_end_segment_matches_golden(model, expected, meta, conds):
    (segment,) = meta["e2e_beam3"][0]["segments"]
    result = beam_search_codes(model, conds["ref_a"], segment["text_ids"], greedy(10.0), num_beams=3)
    assert result.codes_raw.tolist() == segment["codes_raw"]


@pytest.mark.parametrize("case", ["no_stop_no_silence", "stop_mid", "stop_first", "silence_le30_kept",
                                  "silence_31_run", "silence_runs_mixed", "silence_after_stop_counted",
                                  "batch2_mixed", "batch2_no_fix"])
def test_remove_long_silence_cases(meta, case):
    cases = meta["remove_long_silence_cases"]
    assert case in cases
    c = cases[case]
    codes, lens = remove_long_silence(torch.tensor(c["input"]))
    assert codes.tolist() == c["output_codes"]
    assert lens.tolist() == c["output_code_lens"]


def test_remove_long_silence_covers_every_golden_case(meta):
    for name, c in meta["remove_long_silence_cases"].items():
        codes, lens = remove_long_silence(torch.tensor(c["input"]))
        assert codes.tolist() == c["output_codes"], name
        assert lens.tolist() == c["output_code_lens"], name


# -- options -------------------------------------------------------------------------------------

def test_rejects_out_of_range_requests(model, meta, conds):
    with pytest.raises(OptionsError):
        generate_codes(model, conds["ref_a"], text_ids(meta, 0), SamplingOptions(max_codes=MAX_CODES + 1))
    with pytest.raises(TextError):
        generate_codes(model, conds["ref_a"], list(range(3, 3 + 81)), greedy(10.0))
    with pytest.raises(VoiceError):
        generate_codes(model, conds["ref_a"][:, :16], text_ids(meta, 0), greedy(10.0))


# -- sampling ------------------------------------------------------------------------------------

def sampled(seed: int, **kw) -> SamplingOptions:
    return SamplingOptions(seed=seed, max_codes=40, **kw)


def step_scores(model, cond, ids, codes_raw: list[int], options: SamplingOptions) -> torch.Tensor:
    """Recomputes, without the KV cache, the penalised and temperature-scaled scores of every
    step: the start code at mel position 0, generated code k at position k + 2 -> [n, V]."""
    n = len(codes_raw)
    with torch.no_grad():
        seq = prompt_sequence(model, cond, ids)
        if n > 1:
            fed = torch.tensor(codes_raw[:-1]).unsqueeze(0)
            seq = torch.cat([seq, model.embed_mel(fed, torch.arange(2, n + 1))], 1)
        logits = model.logits(model(seq)[0, -n:])
    seen = torch.zeros(logits.size(-1), dtype=torch.bool)
    seen[[1, 8192]] = True
    out = []
    for step in range(n):
        s = logits[step]
        if options.repetition_penalty != 1.0:
            s = torch.where(seen, torch.where(s < 0, s * options.repetition_penalty, s / options.repetition_penalty), s)
        out.append(s / options.temperature)
        seen[codes_raw[step]] = True
    return torch.stack(out)


def test_seeded_sampling_is_reproducible_and_seeds_differ(model, meta, conds):
    ids = text_ids(meta, 1)
    a1 = generate_codes(model, conds["ref_a"], ids, sampled(1)).codes_raw
    a2 = generate_codes(model, conds["ref_a"], ids, sampled(1)).codes_raw
    b = generate_codes(model, conds["ref_a"], ids, sampled(2)).codes_raw
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)


def test_top_k_never_picks_outside_the_k_best(model, meta, conds):
    ids = text_ids(meta, 0)
    picked_rank_above_0 = False
    for seed in range(4):
        options = sampled(seed, top_k=3, top_p=1.0, temperature=2.0, repetition_penalty=2.0)
        codes = generate_codes(model, conds["ref_b"], ids, options).codes_raw.tolist()
        scores = step_scores(model, conds["ref_b"], ids, codes, options)
        for step, code in enumerate(codes):
            rank = int((scores[step] > scores[step, code]).sum())
            assert rank < 3, (seed, step, code, rank)
            picked_rank_above_0 |= rank > 0
    assert picked_rank_above_0, "temperature 2 should sometimes pick a code other than the best"


def test_top_p_never_picks_outside_the_nucleus(model, meta, conds):
    ids, p = text_ids(meta, 2), 0.5
    for seed in range(4):
        options = sampled(seed, top_k=0, top_p=p, temperature=2.0, repetition_penalty=10.0)
        codes = generate_codes(model, conds["ref_a"], ids, options).codes_raw.tolist()
        probs = step_scores(model, conds["ref_a"], ids, codes, options).softmax(-1)
        for step, code in enumerate(codes):
            mass_above = float(probs[step][probs[step] > probs[step, code]].sum())
            assert mass_above < p + 1e-6, (seed, step, code, mass_above)


def test_warpers_match_hugging_face():
    hf = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 500, generator=g) * 3
    ids = torch.tensor([[1, 7, 7, 42, 499]])
    seen = torch.zeros(500, dtype=torch.bool)
    seen[ids[0]] = True
    pairs = [
        (hf.RepetitionPenaltyLogitsProcessor(10.0)(ids, scores.clone())[0], RepetitionPenalty(10.0)(scores[0], seen)),
        (hf.TemperatureLogitsWarper(0.7)(ids, scores.clone())[0], Temperature(0.7)(scores[0])),
        (hf.TopKLogitsWarper(30)(ids, scores.clone())[0], TopK(30)(scores[0])),
        (hf.TopPLogitsWarper(0.8)(ids, scores.clone())[0], TopP(0.8)(scores[0])),
        (hf.TopPLogitsWarper(0.01)(ids, scores.clone())[0], TopP(0.01)(scores[0])),
    ]
    for theirs, ours in pairs:
        assert torch.equal(torch.isinf(theirs), torch.isinf(ours))
        finite = ~torch.isinf(ours)
        torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-6, rtol=0)


def test_concurrent_requests_do_not_share_options(model, meta, conds):
    jobs = [(conds[REFS[k % 2]], text_ids(meta, k % 3),
             sampled(100 + k, top_k=10 + k, temperature=0.8 + 0.1 * k, repetition_penalty=1.0 + k)) for k in range(8)]
    jobs[3] = (jobs[3][0], jobs[3][1], greedy(10.0))
    sequential = [generate_codes(model, *job).codes_raw for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda job: generate_codes(model, *job).codes_raw, jobs))
    for k, (s, c) in enumerate(zip(sequential, concurrent)):
        assert torch.equal(s, c), k


def test_batched_sampling_equals_one_by_one(model, meta, conds):
    requests = [GenerationRequest(conds[REFS[k % 2]], text_ids(meta, k % 3), sampled(7 + k)) for k in range(4)]
    batch = generate_codes_batch(model, requests)
    for request, result in zip(requests, batch):
        alone = generate_codes(model, request.cond_latents, request.text_ids, request.options)
        assert torch.equal(result.codes_raw, alone.codes_raw)
