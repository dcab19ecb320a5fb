"""Reference audio is decoded in bounded memory: highly compressed files ("decompression bombs")
cost what the duration limit allows, implausible headers are refused before decoding, and error
messages name neither file objects nor server directories."""

from __future__ import annotations

import io
import json
import logging
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from indextts.audio import (MAX_CHANNELS, SAMPLE_RATE, ReferenceLimits, decode_audio, load_reference)
from indextts.errors import AudioError
from indextts.stages.conditioning import voice_mels
from indextts.voices import VoiceRegistry

pytestmark = pytest.mark.usefixtures("one_thread")

BOMB_RATE, BOMB_CHANNELS, BOMB_SECONDS = 48000, 2, 600


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Ten minutes of a constant 48 kHz stereo signal as FLAC: ~100 KB that decode to 230 MB."""
    buf = io.BytesIO()
    second = np.full((BOMB_RATE, BOMB_CHANNELS), 0.25, dtype=np.float32)
    with sf.SoundFile(buf, "w", samplerate=BOMB_RATE, channels=BOMB_CHANNELS, format="FLAC",
                      subtype="PCM_16") as f:
        for _ in range(BOMB_SECONDS):
            f.write(second)
    data = buf.getvalue()
    assert len(data) < 400_000
    return data


FULL_DECODE_BYTES = BOMB_RATE * BOMB_SECONDS * BOMB_CHANNELS * 4     # float32, every frame


def _peak_traced(fn):
    """(fn's result, the peak of Python/numpy memory allocated while it ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_compressed_file_is_decoded_only_up_to_the_limit(bomb, caplog):
    limits = ReferenceLimits()
    decoded, peak = _peak_traced(lambda: decode_audio(bomb, limits.max_seconds))
    assert decoded.mono.shape == (1, int(limits.max_seconds * BOMB_RATE))
    assert decoded.truncated and decoded.sample_rate == BOMB_RATE
    assert peak < FULL_DECODE_BYTES / 5
    assert peak < 8 * 1024 * 1024          # a few blocks, whatever the file's length

    with caplog.at_level(logging.WARNING, logger="indextts.audio"):
        audio, peak = _peak_traced(lambda: load_reference(bomb, limits))
    assert audio.shape == (1, int(limits.max_seconds * SAMPLE_RATE))
    assert "600.0 s long; using its first 60.0 s" in caplog.text
    assert peak < FULL_DECODE_BYTES / 5


def test_an_uploaded_bomb_is_stored_in_bounded_memory(bomb, tmp_path):
    registry = VoiceRegistry(tmp_path / "voices")
    info, peak = _peak_traced(lambda: registry.add("bomb", [("bomb.flac", bomb)]))
    assert info.files == ("uploads/bomb/01-bomb.flac",)
    assert peak < FULL_DECODE_BYTES / 5


def _wav(channels: int, rate: int, frames: int = 24000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(frames, dtype=np.float32) / rate
    sf.write(buf, np.repeat(0.3 * np.sin(2 * np.pi * 220 * t)[:, None], channels, axis=1), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _header_only_wav(channels: int, rate: int, data_bytes: int) -> bytes:
    """A PCM_16 WAV header declaring `channels`, `rate` and `data_bytes` of data, with almost none."""
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body + b"\x00" * (block * 8)


@pytest.mark.parametrize("data,rule", [
    (_wav(MAX_CHANNELS + 1, 24000), f"at most {MAX_CHANNELS}"),
    (_header_only_wav(1000, 48000, 0xFFFF0000), f"1000 channels; reference audio may have at most {MAX_CHANNELS}"),
    (_wav(1, 4000), "sample rate of 4000 Hz; reference audio must be sampled at 8000 to 384000 Hz"),
    (_wav(1, 1_000_000), "sample rate of 1000000 Hz; reference audio must be sampled at 8000 to 384000 Hz"),
])
def test_implausible_headers_are_refused_before_decoding(data, rule):
    with pytest.raises(AudioError, match=rule):
        load_reference(data)


def test_a_header_promising_more_data_than_the_file_has_decodes_what_is_there():
    data = _header_only_wav(2, 48000, 0xFFFF0000)    # declares ~6 hours, holds 8 frames
    decoded = decode_audio(data)
    assert decoded.mono.shape[1] <= 8 and not decoded.truncated


def test_plausible_headers_still_load():
    for channels, rate in [(1, 8000), (MAX_CHANNELS, 24000), (2, 384000)]:
        assert load_reference(_wav(channels, rate, frames=rate)).shape[0] == 1


def _assert_clean(message: str, *paths) -> None:
    assert "0x" not in message and "BytesIO" not in message and "Error opening" not in message
    for path in paths:
        assert str(path) not in message


def test_non_audio_uploads_name_the_rule_not_the_file_object(tmp_path):
    registry = VoiceRegistry(tmp_path / "voices")
    with pytest.raises(AudioError, match="notes.wav: .*not a readable audio file") as err:
        registry.add("notes", [("notes.wav", b"this is not audio at all" * 20)])
    _assert_clean(str(err.value), tmp_path)
    with pytest.raises(AudioError) as err:
        load_reference(b"\x00\x01garbage" * 100)
    _assert_clean(str(err.value))
    assert "wav, flac, ogg, mp3" in str(err.value)


def test_errors_for_files_in_the_voices_dir_hide_the_directory(tmp_path):
    root = tmp_path / "voices"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "junk.wav").write_text("not audio")
    (root / "speaker.json").write_text(json.dumps({"junk": ["refs/junk.wav"]}))
    spec = VoiceRegistry(root).resolve("junk")
    with pytest.raises(AudioError, match="voice 'junk': junk.wav is not a readable audio file") as err:
        voice_mels(spec, ReferenceLimits())
    _assert_clean(str(err.value), root.resolve(), tmp_path)
    with pytest.raises(AudioError, match="not found: missing.wav") as err:
        load_reference(root / "missing.wav")
    _assert_clean(str(err.value), root.resolve(), tmp_path)
