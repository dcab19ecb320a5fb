"""BigVGAN vocoder and ECAPA-TDNN speaker encoder against the reference's golden outputs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from indextts.checkpoint import (CheckpointInfo, build_vocoder, load_strict, load_vocoder,
                                 read_state_dict)
from indextts.config import IndexTTSConfig
from indextts.errors import CheckpointError
from indextts.vocoder import BigVGAN
from indextts.vocoder.alias_free import kaiser_sinc_filter

from conftest import GOLDEN

ATOL = 1e-4  # golden README: speaker_embedding and float waveform
WAV_CASES = [(i, p) for i in range(3) for p in ("rp1", "rp10")]
# One weight of the last stage's resblock and one BatchNorm statistic of the speaker encoder;
# +1e-2 on either moves the golden comparison well past ATOL (about 6x and 9x).
PERTURBED_CONV = ("resblocks.17.convs2.2.weight_v", (0, 0, 1))
PERTURBED_BN = ("speaker_encoder.mfa.norm.norm.running_mean", (0,))


@pytest.fixture(scope="module")
def tiny_info(tiny_dir) -> CheckpointInfo:
    return CheckpointInfo.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_info) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in read_state_dict(tiny_info.bigvgan_path, ("generator",)).items()}


@pytest.fixture(scope="module")
def vocoder(tiny_info) -> BigVGAN:
    return load_vocoder(tiny_info)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@torch.inference_mode()
def _speaker_error(model: BigVGAN, expected, ref: str) -> float:
    return _max_err(model.speaker_embedding(expected[f"{ref}.mel"]), expected[f"{ref}.speaker_embedding"])


@torch.inference_mode()
def _wav_error(model: BigVGAN, expected, i: int, p: str) -> float:
    spk = model.speaker_embedding(expected["ref_a.mel"])
    wav = model(expected[f"s{i}.ref_a.{p}.latents"], spk)  # [1, 1, N * 1024]
    return _max_err(wav.squeeze(1), expected[f"s{i}.ref_a.{p}.wav"])


def _load_modified(tiny_info, tmp_path, state_dict) -> BigVGAN:
    """Write `state_dict` as a bigvgan_generator.pth in tmp_path and load it the production way."""
    torch.save({"generator": state_dict}, tmp_path / tiny_info.config.bigvgan_checkpoint)
    return load_vocoder(dataclasses.replace(tiny_info, model_dir=tmp_path))


# --- structure -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_state_dict_matches_official_manifest(version):
    manifest = json.loads((GOLDEN / "manifests" / f"indextts-{version}.bigvgan_generator.json").read_text())
    with torch.device("meta"):
        model = BigVGAN(IndexTTSConfig.preset(version).bigvgan)
    params = dict(model.named_parameters())
    ours = {k: (list(t.shape), str(t.dtype).removeprefix("torch."), "parameter" if k in params else "buffer")
            for k, t in model.state_dict().items()}
    theirs = {e["name"]: (e["shape"], e["dtype"], e["kind"]) for e in manifest["keys"]}
    assert sorted(set(theirs) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(theirs)) == [], "keys the official checkpoint does not have"
    diff = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert diff == {}
    assert len(ours) == manifest["num_tensors"]


def test_anti_alias_filter_matches_stored_buffers(tiny_state_dict):
    # The tiny checkpoint keeps the reference's constructed filters, so a module built without a
    # checkpoint (our __init__) must produce the same taps.
    ours = kaiser_sinc_filter(0.25, 0.3, 12)
    for key in ("resblocks.0.activations.0.upsample.filter", "activation_post.downsample.lowpass.filter"):
        assert torch.equal(ours, tiny_state_dict[key]), key


def test_post_load_folds_weight_norm(tiny_info, tiny_state_dict, vocoder, expected):
    names = [n for n, _ in vocoder.named_parameters()]
    assert not [n for n in names if n.endswith(("weight_g", "weight_v"))]
    assert "conv_pre.weight" in names and "ups.0.0.weight" in names
    # Unfolded (norm computed per call) and folded give the same audio.
    with torch.device("meta"):
        unfolded = build_vocoder(tiny_info.config)
    unfolded = unfolded.to_empty(device="cpu")
    load_strict(unfolded, tiny_state_dict, "tiny")
    unfolded.eval()
    spk = expected["ref_a.speaker_embedding"]
    latents = expected["s0.ref_a.rp10.latents"]
    with torch.inference_mode():
        assert _max_err(unfolded(latents, spk), vocoder(latents, spk)) < 1e-6


# --- golden parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["ref_a", "ref_b"])
def test_speaker_embedding_matches_golden(vocoder, expected, ref):
    assert _speaker_error(vocoder, expected, ref) < ATOL


@pytest.mark.parametrize("i,p", WAV_CASES)
def test_waveform_matches_golden(vocoder, expected, i, p):
    assert _wav_error(vocoder, expected, i, p) < ATOL


def test_batched_calls_match_single_calls(vocoder, expected):
    mels = [expected["ref_a.mel"][..., :321], expected["ref_b.mel"]]  # equal frame counts
    latents = [expected["s2.ref_a.rp10.latents"], expected["s0.ref_a.rp1.latents"][:, :20]]
    with torch.inference_mode():
        spk = vocoder.speaker_embedding(torch.cat(mels))
        wav = vocoder(torch.cat(latents), spk)
        for b in range(2):
            single_spk = vocoder.speaker_embedding(mels[b])
            assert _max_err(spk[b:b + 1], single_spk) < 1e-5
            assert _max_err(wav[b:b + 1], vocoder(latents[b], single_spk)) < 1e-5


# --- the golden comparisons can fail -------------------------------------------------------------

def test_perturbed_resblock_weight_breaks_waveform_parity(tiny_info, tiny_state_dict, expected, tmp_path):
    key, index = PERTURBED_CONV
    sd = {k: v.clone() for k, v in tiny_state_dict.items()}
    sd[key][index] += 1e-2
    model = _load_modified(tiny_info, tmp_path, sd)
    assert _wav_error(model, expected, 0, "rp10") > ATOL


def test_perturbed_batchnorm_statistic_breaks_speaker_parity(tiny_info, tiny_state_dict, expected, tmp_path):
    key, index = PERTURBED_BN
    sd = {k: v.clone() for k, v in tiny_state_dict.items()}
    sd[key][index] += 1e-2
    model = _load_modified(tiny_info, tmp_path, sd)
    assert _speaker_error(model, expected, "ref_a") > ATOL


# --- strict loading ------------------------------------------------------------------------------

def _remove(sd, key):
    del sd[key]


def _rename(sd, key):
    sd[key.replace("weight_v", "weight")] = sd.pop(key)


def _reshape(sd, key):
    sd[key] = torch.zeros(17)


@pytest.mark.parametrize("edit,key,reported", [
    (_remove, "resblocks.4.convs1.1.weight_g", ["resblocks.4.convs1.1.weight_g"]),
    (_rename, "ups.2.0.weight_v", ["ups.2.0.weight_v", "ups.2.0.weight"]),
    (_reshape, "speaker_encoder.fc.conv.bias", ["speaker_encoder.fc.conv.bias"]),
])
def test_damaged_checkpoint_raises_naming_the_key(tiny_info, tiny_state_dict, tmp_path, edit, key, reported):
    sd = dict(tiny_state_dict)
    edit(sd, key)
    with pytest.raises(CheckpointError) as info:
        _load_modified(tiny_info, tmp_path, sd)
    for name in reported:
        assert name in str(info.value)


# --- fused anti-aliased SnakeBeta (Triton) --------------------------------------------------------
_FUSED_CHECK = r"""
import json, torch
from indextts.vocoder import fused
from indextts.vocoder.alias_free import AntiAliasedSnakeBeta, SNAKE_EPS
torch.manual_seed(0)
errors, perturbed = [], None
for C, T in [(3, 1), (4, 2), (5, 7), (8, 300), (2, 513)]:
    m = AntiAliasedSnakeBeta(C)
    with torch.no_grad():
        m.act.alpha.normal_(0, 0.5)
        m.act.beta.normal_(0, 0.5)
    x = torch.randn(2, C, T) * 2
    ref = m(x)
    got = fused.anti_aliased_snake(x, m.upsample.filter, m.downsample.lowpass.filter, m.act.alpha, m.act.beta)
    errors.append([C, T, list(got.shape) == list(ref.shape), (got - ref).abs().max().item(), ref.abs().max().item()])
    if T == 300:   # one wrong tap must show: the check can fail
        bad = m.downsample.lowpass.filter.clone()
        bad[0, 0, 3] += 1e-2
        perturbed = (fused.anti_aliased_snake(x, m.upsample.filter, bad, m.act.alpha, m.act.beta) - ref).abs().max().item()
# right-padded items with their own lengths: each as if alone, zeros past its end
m = AntiAliasedSnakeBeta(4)
with torch.no_grad():
    m.act.alpha.normal_(0, 0.5)
    m.act.beta.normal_(0, 0.5)
lens = [1, 2, 7, 300, 513]
x = torch.randn(len(lens), 4, max(lens))
got = fused.anti_aliased_snake(x, m.upsample.filter, m.downsample.lowpass.filter, m.act.alpha, m.act.beta,
                               torch.tensor(lens))
padded = [[n, (got[b, :, :n] - m(x[b:b + 1, :, :n])[0]).abs().max().item(), got[b, :, n:].abs().sum().item()]
          for b, n in enumerate(lens)]
print(json.dumps({"eps_equal": SNAKE_EPS == fused.SNAKE_EPS, "errors": errors, "perturbed": perturbed,
                  "padded": padded}))
"""


def test_fused_anti_aliased_snake_matches_the_modules():
    """The Triton kernel (run by Triton's CPU interpreter here) against the PyTorch modules,
    edges included (T = 1, 2, odd lengths)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _FUSED_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["eps_equal"]
    for c, t, same_shape, err, scale in result["errors"]:
        assert same_shape, (c, t)
        assert err < 1e-5 * max(1.0, scale), (c, t, err)
    assert result["perturbed"] > 1e-3
    for n, err, tail in result["padded"]:
        assert err < 1e-5 and tail == 0.0, (n, err, tail)


def _padded_vs_single(model: BigVGAN, device: str = "cpu") -> list[float]:
    torch.manual_seed(0)
    lens = [7, 13, 20, 1, 2]
    lat = [torch.randn(n, model.cfg.gpt_dim, device=device) for n in lens]
    spk = torch.randn(len(lens), 1, model.cfg.speaker_embedding_dim, device=device)
    x = torch.zeros(len(lens), max(lens), model.cfg.gpt_dim, device=device)
    for i, item in enumerate(lat):
        x[i, :len(item)] = item
    with torch.inference_mode():
        batched = model(x, spk, torch.tensor(lens, device=device))
        return [_max_err(batched[i, 0, :n * model.hop_length], model(lat[i][None], spk[i:i + 1])[0, 0])
                for i, n in enumerate(lens)]


def test_padded_batch_with_lengths_equals_each_item_alone(vocoder):
    errors = _padded_vs_single(vocoder)
    assert max(errors) < 1e-5, errors


def test_padded_batch_without_lengths_differs_at_the_tail(vocoder):
    """The lengths are what makes padding harmless: without them the short items' ends change."""
    torch.manual_seed(0)
    a, b = torch.randn(5, vocoder.cfg.gpt_dim), torch.randn(9, vocoder.cfg.gpt_dim)
    spk = torch.randn(1, 1, vocoder.cfg.speaker_embedding_dim)
    x = torch.zeros(2, 9, vocoder.cfg.gpt_dim)
    x[0, :5], x[1] = a, b
    with torch.inference_mode():
        alone = vocoder(a[None], spk)[0, 0]
        unmasked = vocoder(x, spk)[0, 0, :5 * vocoder.hop_length]
    assert _max_err(unmasked, alone) > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("i,p", WAV_CASES[:2])
def test_waveform_matches_golden_on_cuda_with_the_fused_activation(tiny_info, expected, i, p):
    from indextts.vocoder import fused
    model = load_vocoder(tiny_info, "cuda", torch.float32)
    x = torch.zeros(1, 1, 1, device="cuda")
    assert fused.available(x)
    with torch.inference_mode():
        spk = model.speaker_embedding(expected["ref_a.mel"].cuda())
        wav = model(expected[f"s{i}.ref_a.{p}.latents"].cuda(), spk).cpu()
    assert _max_err(wav.squeeze(1), expected[f"s{i}.ref_a.{p}.wav"]) < ATOL


@pytest.fixture
def no_tf32():
    """cuDNN's TF32 convolutions (PyTorch's default) differ by batch shape up to ~3e-4 on the
    tiny vocoder (an H100 run: 3.3e-4 with TF32, 0.0 without), more than float32 rounding."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
def test_padded_batch_on_cuda_equals_each_item_alone(tiny_info, no_tf32):
    errors = _padded_vs_single(load_vocoder(tiny_info, "cuda", torch.float32), "cuda")
    assert max(errors) < 1e-4, errors


# --- CUDA graphs (indextts.vocoder.graphs) --------------------------------------------------------

def test_graph_buckets_cover_the_schedule_windows_without_padding():
    from indextts.vocoder.graphs import frame_buckets, window_lengths
    # first chunk: no left context; later chunks: context + chunk + lookahead
    assert window_lengths((40, 24, 48, 96), 34, 34) == [74, 92, 116, 164]
    assert window_lengths((16,), 34, 34) == [50, 84]
    buckets = frame_buckets([74, 92, 116, 164], 32, 256)
    assert buckets == [32, 64, 74, 92, 96, 116, 128, 160, 164, 192, 224, 256]


def test_graph_bucket_is_the_smallest_that_holds_a_call(vocoder):
    from indextts.vocoder.graphs import VocoderGraphs
    graphs = VocoderGraphs(vocoder, [1, 2, 4, 8], [32, 74, 92])
    assert graphs.bucket(1, 74) == (1, 74)
    assert graphs.bucket(3, 75) == (4, 92)
    assert graphs.bucket(8, 1) == (8, 32)
    assert graphs.bucket(9, 10) is None and graphs.bucket(1, 93) is None
    with pytest.raises(KeyError, match="no captured graph"):      # nothing captured on a CPU
        graphs.run([torch.zeros(10, vocoder.cfg.gpt_dim)], torch.zeros(1, 1, vocoder.cfg.speaker_embedding_dim))


def test_windows_of_one_graph_bucket_share_a_call(tiny_info):
    """With graphs, windows whose lengths fall in one frame bucket go in one call (padded), longer
    ones than the largest bucket keep the equal-length rule."""
    from indextts.stages.vocoder import BigVGANStage
    from indextts.vocoder.graphs import VocoderGraphs
    stage = BigVGANStage(load_vocoder(tiny_info, "cpu", torch.float32), max_batch=4)
    try:
        lats = [torch.zeros(n, 8) for n in (70, 74, 80, 92, 92, 92, 92, 92, 300, 301)]
        assert stage._groups(lats) == [[0], [1], [2], [3, 4, 5, 6], [7], [8], [9]]    # no graphs: equal lengths
        stage.graphs = VocoderGraphs(stage.model, [1, 2, 4], [74, 92])
        assert stage._groups(lats) == [[0, 1], [2, 3, 4, 5], [6, 7], [8], [9]]
        lats[1] = torch.zeros(73, 8)
        assert stage._groups(lats)[0] == [0, 1]
        stage.graphs = None
        assert stage._groups(lats)[:2] == [[0], [1]]
        with pytest.raises(Exception, match="CUDA graphs need a CUDA device"):
            stage.capture_graphs((40, 24))
    finally:
        stage.close()


@pytest.mark.gpu
def test_graphed_vocoder_equals_eager_on_cuda(tiny_info, no_tf32):
    """Replays give what the eager padded call gives, and each item what it gives alone (fp32)."""
    from indextts.stages.vocoder import BigVGANStage
    from indextts.vocoder.graphs import VocoderGraphs
    model = load_vocoder(tiny_info, "cuda", torch.float32)
    graphs = VocoderGraphs(model, [1, 4], [16, 32])
    graphs.capture()
    assert graphs.captured == 4
    torch.manual_seed(0)
    lens = [7, 13, 20]
    lat = [torch.randn(n, model.cfg.gpt_dim) for n in lens]
    spk = torch.randn(len(lens), 1, model.cfg.speaker_embedding_dim, device="cuda")
    out = graphs.run(lat, spk)
    assert out.shape == (3, 20 * model.hop_length)
    with torch.inference_mode():
        for i, n in enumerate(lens):
            alone = model(lat[i][None].cuda(), spk[i:i + 1])[0, 0].cpu()
            assert _max_err(out[i, :n * model.hop_length], alone) < 1e-4
    stage = BigVGANStage(model, max_batch=4)
    try:
        stage.capture_graphs((8, 4))
        assert stage.graphs.captured == 3 * len(stage.graphs.frames)     # batches 1, 2, 4
    finally:
        stage.close()
