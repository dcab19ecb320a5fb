"""Exact chunked vocoding (indextts.vocoder.streaming): the receptive field from the config against
a NaN probe, and windowed / stateful chunks against whole-segment vocoding."""

from __future__ import annotations

import random

import pytest
import torch

from indextts.checkpoint import CheckpointInfo, load_vocoder
from indextts.config import BigVGANConfig, IndexTTSConfig
from indextts.random_checkpoint import randomize
from indextts.vocoder import BigVGAN
from indextts.vocoder.streaming import (ReceptiveField, StreamingVocoder, receptive_field, receptive_field_of,
                                        vocode_chunked, vocode_window, WindowCutter)

ATOL = 1e-4  # fp32 CPU, as the golden waveform tolerance
# A "hold-out" vocoder unlike IndexTTS's: other rates (hop 30), kernels, dilation counts, no per-stage speaker terms.
HOLDOUT = BigVGANConfig(gpt_dim=24, num_mels=20, upsample_rates=(3, 5, 2), upsample_kernel_sizes=(7, 11, 4),
                        upsample_initial_channel=32, resblock_kernel_sizes=(5, 9),
                        resblock_dilation_sizes=((1, 2), (2, 4, 1)), speaker_embedding_dim=16,
                        cond_d_vector_in_each_upsampling_layer=False, speaker_encoder_channels=(8, 8, 8, 8, 24))
SCHEDULES = {
    "ones": [1],                      # the last size repeats until the segment ends
    "8-24": [8, 24],
    "24-48": [24, 48],
    "random": "random",
    "first-larger-than-segment": [1000],
}


@pytest.fixture(scope="module")
def tiny() -> BigVGAN:
    return load_vocoder(CheckpointInfo.from_dir("tests/golden/tiny"))


@pytest.fixture(scope="module")
def holdout() -> BigVGAN:
    """HOLDOUT with random weights, log-scale snake parameters included."""
    model = BigVGAN(HOLDOUT)
    gen = torch.Generator().manual_seed(3)
    randomize(model.state_dict(), gen, std=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.normal_(0.0, 0.3, generator=gen)
    model.post_load()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_segment(expected):
    """80 golden latent frames (two golden segments back to back, longer than twice the reach)."""
    lat = torch.cat([expected["s0.ref_b.rp10.latents"], expected["s2.ref_a.rp10.latents"]], dim=1)
    return lat, expected["ref_a.speaker_embedding"]


@pytest.fixture(scope="module")
def holdout_segment(holdout):
    gen = torch.Generator().manual_seed(4)
    return (torch.randn(1, 90, HOLDOUT.gpt_dim, generator=gen),
            torch.randn(1, 1, HOLDOUT.speaker_embedding_dim, generator=gen))


def _schedule(name: str, frames: int) -> list[int]:
    if SCHEDULES[name] == "random":
        rng = random.Random(5)
        return [rng.randint(1, 30) for _ in range(frames)]
    return SCHEDULES[name]


def _stream(model: BigVGAN, lat, spk, schedule: list[int], lookahead=None) -> tuple[torch.Tensor, list[int]]:
    """Feed `lat` in chunks of `schedule` (its last size repeated); the waveform and samples after each feed."""
    sv = StreamingVocoder(model, lookahead=lookahead)
    state, out, counts, i, k = sv.start(spk), [], [], 0, 0
    while i < lat.shape[1]:
        n = schedule[min(k, len(schedule) - 1)]
        out.append(sv.feed(state, lat[:, i:i + n]))
        counts.append(sum(o.shape[-1] for o in out))
        i, k = i + n, k + 1
    out.append(sv.finish(state))
    return torch.cat(out, dim=-1), counts


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@torch.inference_mode()
def _nan_probe(model: BigVGAN, frames: int) -> ReceptiveField:
    """Put a NaN in the middle latent frame: NaN spreads through every tap whatever its value, so
    the NaN samples are the frame's exact structural support."""
    j, hop = frames // 2, model.hop_length
    lat = torch.randn(1, frames, model.cfg.gpt_dim)
    lat[0, j, 0] = float("nan")
    idx = torch.nonzero(torch.isnan(model(lat, torch.randn(1, 1, model.cfg.speaker_embedding_dim))[0, 0])).flatten()
    assert 0 < idx.min() and idx.max() < frames * hop - 1, "segment too short to see the whole reach"
    return ReceptiveField(before=j * hop - idx.min().item(), after=idx.max().item() - ((j + 1) * hop - 1), hop=hop)


# --- receptive field ----------------------------------------------------------------------------

def test_receptive_field_from_config_equals_nan_probe_on_tiny(tiny):
    rf = receptive_field(CheckpointInfo.from_dir("tests/golden/tiny").config.bigvgan)
    assert rf == receptive_field_of(tiny)
    assert _nan_probe(tiny, 2 * rf.context + 4) == rf


def test_receptive_field_from_config_equals_nan_probe_on_holdout(holdout):
    rf = receptive_field(HOLDOUT)
    assert rf.hop == 30
    assert _nan_probe(holdout, 2 * rf.context + 4) == rf


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_official_configs_reach(version):
    # Pinned so a change to the layer maps shows; docs/streaming_vocoder.md explains the value.
    rf = receptive_field(IndexTTSConfig.preset(version).bigvgan)
    assert (rf.before, rf.after, rf.context, rf.lookahead) == (34593, 34593, 34, 34)


# --- stateful streaming == whole segment ---------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny", "holdout"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_stream_equals_whole(request, model, name):
    vocoder, (lat, spk) = request.getfixturevalue(model), request.getfixturevalue(f"{model}_segment")
    with torch.inference_mode():
        whole = vocoder(lat, spk)
    got, _ = _stream(vocoder, lat, spk, _schedule(name, lat.shape[1]))
    assert _err(got, whole) <= ATOL


def test_stream_emits_every_final_sample(holdout, holdout_segment):
    """After n frames, every sample of frames up to n - lookahead is out (the delay is at most the
    receptive field), and nothing depending on frames not yet fed."""
    lat, spk = holdout_segment
    rf = receptive_field_of(holdout)
    _, counts = _stream(holdout, lat, spk, [1])
    for n, emitted in enumerate(counts, start=1):
        assert emitted >= (n - rf.lookahead) * rf.hop
        assert emitted <= max(0, n * rf.hop - rf.before)


def test_stream_batch_in_lockstep(holdout):
    gen = torch.Generator().manual_seed(6)
    lat = torch.randn(2, 50, HOLDOUT.gpt_dim, generator=gen)
    spk = torch.randn(2, 1, HOLDOUT.speaker_embedding_dim, generator=gen)
    with torch.inference_mode():
        whole = holdout(lat, spk)
    got, _ = _stream(holdout, lat, spk, [7, 13])
    assert _err(got, whole) <= ATOL


def test_finished_stream_refuses_more(holdout, holdout_segment):
    lat, spk = holdout_segment
    sv = StreamingVocoder(holdout)
    state = sv.start(spk)
    sv.feed(state, lat[:, :5])
    sv.finish(state)
    with pytest.raises(RuntimeError):
        sv.feed(state, lat[:, 5:6])


# --- windows cut from the segment ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["24-48", "first-larger-than-segment"])   # one window costs a whole call
def test_windows_equal_whole_on_tiny(tiny, tiny_segment, name):
    lat, spk = tiny_segment
    with torch.inference_mode():
        whole = tiny(lat, spk)
        got = torch.cat(list(vocode_chunked(tiny, lat, spk, _schedule(name, lat.shape[1]))), dim=-1)
    assert _err(got, whole) <= ATOL


@pytest.mark.parametrize("name", ["ones", "8-24", "random"])
def test_windows_equal_whole_on_holdout(holdout, holdout_segment, name):
    lat, spk = holdout_segment
    with torch.inference_mode():
        whole = holdout(lat, spk)
        got = torch.cat(list(vocode_chunked(holdout, lat, spk, _schedule(name, lat.shape[1]))), dim=-1)
    assert _err(got, whole) <= ATOL


def test_vocode_window_keeps_the_chunk(holdout, holdout_segment):
    lat, spk = holdout_segment
    rf, hop = receptive_field_of(holdout), holdout.hop_length
    with torch.inference_mode():
        whole = holdout(lat, spk)
        got = vocode_window(holdout, lat[:, 40 - rf.context:50 + rf.lookahead], spk, rf.context, 10)
    assert _err(got, whole[..., 40 * hop:50 * hop]) <= ATOL


def _cut_windows(model: BigVGAN, lat, spk, schedule: list[int], context: int, lookahead: int):
    """`WindowCutter` fed chunks of `schedule`: the emitted frame counts, the concatenated samples
    of its windows, and the most frames it kept."""
    cutter, out, emitted, kept, i, k = WindowCutter(context, lookahead), [], [], 0, 0, 0
    while i < lat.shape[1]:
        n = schedule[min(k, len(schedule) - 1)]
        window = cutter.push(lat[0, i:i + n], final=i + n >= lat.shape[1])
        kept = max(kept, cutter.kept.shape[0])
        if window is not None:
            emitted.append(window.emit)
            out.append(vocode_window(model, window.latents[None], spk, window.left, window.emit))
        i, k = i + n, k + 1
    return emitted, torch.cat(out, dim=-1), kept


@pytest.mark.parametrize("name", ["ones", "8-24", "random", "first-larger-than-segment"])
def test_cut_windows_equal_whole_on_holdout(holdout, holdout_segment, name):
    lat, spk = holdout_segment
    rf = receptive_field_of(holdout)
    with torch.inference_mode():
        emitted, got, kept = _cut_windows(holdout, lat, spk, _schedule(name, lat.shape[1]), rf.context, rf.lookahead)
        whole = holdout(lat, spk)
    assert _err(got, whole) <= ATOL
    assert sum(emitted) == lat.shape[1] and all(e > 0 for e in emitted)
    # frames are kept only while a later window may still read them as context or lookahead
    assert kept <= max(_schedule(name, lat.shape[1])) + rf.context + rf.lookahead


def test_cut_windows_wait_for_the_lookahead(holdout, holdout_segment):
    lat, spk = holdout_segment
    rf = receptive_field_of(holdout)
    cutter = WindowCutter(rf.context, rf.lookahead)
    assert cutter.push(lat[0, :rf.lookahead], final=False) is None          # every frame still awaits its lookahead
    window = cutter.push(lat[0, rf.lookahead:rf.lookahead + 10], final=False)
    assert (window.left, window.emit, window.latents.shape[0]) == (0, 10, 10 + rf.lookahead)
    window = cutter.push(lat[0, rf.lookahead + 10:rf.lookahead + 12], final=True)   # the end: the rest
    assert (window.left, window.emit) == (10, rf.lookahead + 2)


# --- a short lookahead is measurably inexact -----------------------------------------------------

@pytest.mark.parametrize("lookahead", [0, 4])
def test_short_lookahead_differs_from_whole(holdout, holdout_segment, lookahead):
    lat, spk = holdout_segment
    with torch.inference_mode():
        whole = holdout(lat, spk)
        windows = torch.cat(list(vocode_chunked(holdout, lat, spk, [10], lookahead=lookahead)), dim=-1)
    streamed, _ = _stream(holdout, lat, spk, [10], lookahead=lookahead)
    assert _err(windows, whole) > 100 * ATOL
    assert _err(streamed, whole) > 100 * ATOL


def test_short_lookahead_stream_equals_windows_ending_at_the_same_frames(holdout, holdout_segment):
    """The speculative samples are those of a window that ends where the fed frames end."""
    lat, spk = holdout_segment
    la, size = 4, 10
    streamed, _ = _stream(holdout, lat, spk, [size], lookahead=la)
    with torch.inference_mode():
        windows = torch.cat(list(vocode_chunked(holdout, lat, spk, [size - la, size], lookahead=la)), dim=-1)
    assert _err(streamed, windows) <= ATOL


def test_full_lookahead_stream_equals_whole(holdout, holdout_segment):
    lat, spk = holdout_segment
    with torch.inference_mode():
        whole = holdout(lat, spk)
    streamed, _ = _stream(holdout, lat, spk, [10], lookahead=receptive_field_of(holdout).lookahead)
    assert _err(streamed, whole) <= ATOL
