"""Output encoders: every format decodes back to 24 kHz mono of the right length, streams where
it should, and `speed` changes the duration but not the pitch."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from indextts.audio import float_to_int16
from indextts.errors import OptionsError
from indextts.formats import FORMATS, SpeechEncoder, audio_format, check_speed, content_type

from conftest import CODEC_SLACK_S

SR = 24000
# Priming/padding a live mp3/aac stream cannot trim (no gapless header without seeking back).


def tone(seconds: float, freq: float = 220.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (0.4 * torch.sin(2 * torch.pi * freq * t)).float()


def encode(fmt: str, x: torch.Tensor, speed: float = 1.0, chunk: int = 4800, **kw) -> list[bytes]:
    enc = SpeechEncoder(fmt, speed, **kw)
    return [enc.feed(x[i:i + chunk]) for i in range(0, len(x), chunk)] + [enc.finish()]


def decode(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    """float samples and the sample rate the file declares (PyAV; raw pcm by hand)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, SR
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 1
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(frames)
    if fmt == "opus":
        # libavcodec always decodes Opus at 48 kHz; the Ogg header records our input rate.
        assert rate == 48000
        assert sf.info(io.BytesIO(data)).samplerate == SR
        return samples[::2], SR
    return samples, rate


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_decodes_to_24k_mono_with_the_right_duration(fmt):
    x = tone(1.5)
    data = b"".join(encode(fmt, x))
    samples, rate = decode(fmt, data)
    assert rate == SR
    assert abs(len(samples) / SR - 1.5) <= CODEC_SLACK_S.get(fmt, 0.0) + 1e-9
    # The signal survives: a 220 Hz tone stays a 220 Hz tone (lossy codecs included).
    assert dominant_frequency(samples) == pytest.approx(220, abs=3)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "wav"])
def test_soundfile_reads_what_we_write(fmt):
    data = b"".join(encode(fmt, tone(1.0)))
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == SR
    assert abs(len(samples) / SR - 1.0) <= CODEC_SLACK_S.get(fmt, 0.0)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "wav", "pcm"])
def test_streaming_formats_emit_bytes_before_the_end(fmt):
    chunks = encode(fmt, tone(2.0), chunk=SR // 2)
    assert sum(len(c) for c in chunks[:-1]) > 0.5 * sum(len(c) for c in chunks)


def test_flac_is_sent_whole_with_an_exact_header():
    chunks = encode("flac", tone(1.0))
    assert all(c == b"" for c in chunks[:-1])
    assert sf.info(io.BytesIO(chunks[-1])).frames == SR
    assert not audio_format("flac").streams


def test_wav_and_pcm_carry_the_originals_int16_samples_exactly():
    x = torch.randn(SR) * 0.5
    expected = float_to_int16(x).numpy()
    pcm = np.frombuffer(b"".join(encode("pcm", x)), "<i2")
    np.testing.assert_array_equal(pcm, expected)
    streamed = b"".join(encode("wav", x))
    assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[40:44] == b"\xff\xff\xff\xff"
    np.testing.assert_array_equal(sf.read(io.BytesIO(streamed), dtype="int16")[0], expected)
    whole = b"".join(encode("wav", x, streaming=False))
    with wave.open(io.BytesIO(whole)) as w:
        assert (w.getnframes(), w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, SR, 1, 2)
        np.testing.assert_array_equal(np.frombuffer(w.readframes(SR), "<i2"), expected)


def test_int16_input_is_taken_as_is():
    x = (torch.arange(1000, dtype=torch.int32) - 500).to(torch.int16)
    assert np.frombuffer(b"".join(encode("pcm", x)), "<i2").tolist() == x.tolist()


def test_empty_audio_gives_an_empty_but_valid_wav():
    data = b"".join(encode("wav", torch.zeros(0), streaming=False))
    assert sf.info(io.BytesIO(data)).frames == 0


def dominant_frequency(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_speed_scales_duration_by_one_over_speed_and_keeps_pitch(speed):
    x = tone(2.0, freq=300.0)
    samples, _ = decode("wav", b"".join(encode("wav", x, speed=speed)))
    assert len(samples) / SR == pytest.approx(2.0 / speed, rel=0.03)
    assert dominant_frequency(samples) == pytest.approx(300, abs=5)


def test_speed_one_is_bit_exact():
    x = torch.randn(5000) * 0.3
    assert b"".join(encode("pcm", x, speed=1.0)) == float_to_int16(x).numpy().astype("<i2").tobytes()


@pytest.mark.parametrize("bad", [0.2, 4.5, 0, -1, float("nan"), float("inf"), True, "2"])
def test_bad_speed_is_an_options_error(bad):
    with pytest.raises(OptionsError, match="speed"):
        check_speed(bad)


def test_content_types_and_unknown_formats():
    assert {f: content_type(f) for f in FORMATS} == {
        "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
        "wav": "audio/wav", "pcm": "audio/pcm"}
    assert audio_format("MP3").name == "mp3"
    with pytest.raises(OptionsError, match="mp3, opus, aac, flac, wav, pcm"):
        audio_format("ogg")
