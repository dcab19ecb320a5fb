"""Reference audio: golden resample + mel parity, formats, and every bad-input error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from indextts.audio import (SAMPLE_RATE, ReferenceLimits, float_to_int16, load_reference,
                            mel_spectrogram, reference_mel)
from indextts.errors import AudioError

from conftest import TINY


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("ref", ["ref_a", "ref_b"])
def test_golden_resample_and_mel(ref, expected):
    audio = load_reference(TINY / f"{ref}.wav")
    want = expected[f"{ref}.audio_24k"]
    assert audio.shape == want.shape
    torch.testing.assert_close(audio, want, atol=1e-5, rtol=0)
    mel = mel_spectrogram(audio)
    assert mel.shape == expected[f"{ref}.mel"].shape
    torch.testing.assert_close(mel, expected[f"{ref}.mel"], atol=1e-2, rtol=0)
    # Relative to each frame's maximum the linear mel agrees far more tightly.
    lin, lin_want = mel.exp(), expected[f"{ref}.mel"].exp()
    peak = lin_want.amax(dim=1, keepdim=True)
    assert ((lin - lin_want).abs() / peak).max() < 1e-4


def test_mel_detects_a_wrong_pipeline(expected):
    audio = load_reference(TINY / "ref_a.wav")
    # Skipping the resample (treating 22.05 kHz as 24 kHz) must not pass the golden check.
    raw, _ = sf.read(TINY / "ref_a.wav", dtype="float32")
    wrong = mel_spectrogram(torch.from_numpy(raw)[None])
    assert wrong.shape != expected["ref_a.mel"].shape or (wrong - expected["ref_a.mel"]).abs().max() > 1e-2
    louder = mel_spectrogram(audio * 1.01)
    assert (louder - expected["ref_a.mel"]).abs().max() > 5e-3


def _ref_a() -> tuple[np.ndarray, int]:
    return sf.read(TINY / "ref_a.wav", dtype="float32")


@pytest.mark.parametrize("fmt,subtype,lossless", [
    ("WAV", "PCM_16", True), ("FLAC", "PCM_16", True), ("OGG", "VORBIS", False),
    ("OGG", "OPUS", False), ("MP3", "MPEG_LAYER_III", False)])
def test_formats(tmp_path, fmt, subtype, lossless):
    data, sr = _ref_a()
    if subtype == "OPUS":  # Opus only takes 8/12/16/24/48 kHz
        data, sr = sf.read(TINY / "ref_b.wav", dtype="float32")
    path = tmp_path / f"ref.{fmt.lower()}"
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    audio = load_reference(path)
    expected_len = len(data) * SAMPLE_RATE / sr
    assert audio.shape[0] == 1 and audio.dtype == torch.float32
    assert abs(audio.shape[1] - expected_len) < 0.05 * SAMPLE_RATE  # codecs add priming samples
    if lossless:
        torch.testing.assert_close(audio, load_reference(TINY / "ref_a.wav"), atol=1e-5, rtol=0)
    else:
        mel, ref = mel_spectrogram(audio), reference_mel(TINY / ("ref_b.wav" if sr == 16000 else "ref_a.wav"))
        frames = min(mel.shape[-1], ref.shape[-1])
        # Lossy codecs keep the spectral envelope: the mean log-mel stays close.
        assert (mel[..., :frames].mean(-1) - ref[..., :frames].mean(-1)).abs().mean() < 1.0


def test_bytes_and_stereo_mix(tmp_path):
    data, sr = _ref_a()
    stereo = np.stack([data, 0.5 * data], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, sr, subtype="FLOAT")
    mixed = load_reference(path.read_bytes())
    mono = load_reference(TINY / "ref_a.wav")
    torch.testing.assert_close(mixed, 0.75 * mono, atol=1e-4, rtol=0)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_reference(tmp_path / "missing.wav")


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_reference(path)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_reference(b"\x00\x01garbage" * 100)


def test_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0,), dtype="float32"), 24000)
    with pytest.raises(AudioError, match="empty"):
        load_reference(path)


def test_silent(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(24000 * 2, dtype="float32"), 24000)
    with pytest.raises(AudioError, match="silent"):
        load_reference(path)


def test_too_short(tmp_path):
    data, sr = _ref_a()
    path = tmp_path / "short.wav"
    sf.write(path, data[: int(0.3 * sr)], sr)
    with pytest.raises(AudioError, match="at least 0.5 s"):
        load_reference(path)


def test_too_long_is_truncated_with_warning(tmp_path, caplog):
    data, sr = _ref_a()
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(data, 3), sr)
    with caplog.at_level(logging.WARNING, logger="indextts.audio"):
        audio = load_reference(path, ReferenceLimits(max_seconds=5.0))
    assert "using its first 5.0 s" in caplog.text
    assert audio.shape[1] == pytest.approx(5.0 * SAMPLE_RATE, abs=2)
    mel = reference_mel(path, ReferenceLimits(max_seconds=5.0))
    assert mel.shape[-1] == audio.shape[1] // 256 + 1


def test_limits_validated():
    with pytest.raises(ValueError):
        ReferenceLimits(min_seconds=2, max_seconds=1)
    with pytest.raises(ValueError):
        ReferenceLimits(max_seconds=500)


def test_float_to_int16_truncates_toward_zero_and_clamps():
    wav = torch.tensor([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1 / 32767 * 0.99,
                        0.99999, -0.99999, 1e-5, -1e-5])
    out = float_to_int16(wav)
    assert out.dtype == torch.int16
    # 32767 * 0.5 = 16383.5 -> 16383 (not rounded); the negative side never reaches -32768.
    assert out.tolist() == [0, 32767, -32767, 32767, -32767, 16383, -16383, 0, 32766, -32766, 0, 0]
