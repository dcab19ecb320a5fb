"""Output encoders: 24 kHz mono samples -> mp3, opus (Ogg), aac (ADTS), flac, wav or raw pcm bytes.

Every encoder is incremental: `feed(samples)` returns the bytes that are ready now (possibly none)
and `finish()` the rest, so an HTTP response can stream audio while later segments are still
being synthesised. The compressed formats go through PyAV (ffmpeg's libavcodec/libavformat);
wav and pcm are written here.

What streams and what does not:

- mp3, opus, aac, pcm: pure streams, bytes leave as soon as the codec emits them. mp3 and aac
  carry the codec's priming delay (~50 ms more duration when decoded) because a live stream
  cannot be rewritten to add the gapless-playback header at the end.
- wav: streamed with the RIFF and data sizes set to 0xFFFFFFFF ("unknown length", as OpenAI's
  API does); readers (libsndfile, ffmpeg, Python's `wave`) take the data up to the end of the
  file. `streaming=False` writes the exact sizes instead, for responses sent whole.
- flac: always sent whole. Its STREAMINFO header holds the total sample count, which is known
  only at the end; a streamed flac with an unknown count is legal, but libsndfile (soundfile)
  cannot read it, so we buffer and emit a complete, exact file from `finish()`.

`speed` (0.25-4.0) changes tempo without changing pitch through ffmpeg's `atempo` filter
(WSOLA), chained in steps within [0.5, 2.0] where it sounds best.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Protocol, Union

import av
import av.filter
import numpy as np
import torch

from indextts.audio import SAMPLE_RATE, float_to_int16
from indextts.errors import OptionsError

MIN_SPEED = 0.25
MAX_SPEED = 4.0
# atempo sounds cleanest within this range; larger factors are chained.
_ATEMPO_STEP_MIN, _ATEMPO_STEP_MAX = 0.5, 2.0
_UNKNOWN_LENGTH = 0xFFFFFFFF

Samples = Union[torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class AudioFormat:
    """One response format: its HTTP content type and how we produce it."""

    name: str
    content_type: str
    streams: bool                    # bytes leave before the utterance is finished
    container: Optional[str] = None  # ffmpeg muxer; None for formats written here
    codec: Optional[str] = None      # ffmpeg encoder
    sample_format: Optional[str] = None
    bit_rate: Optional[int] = None   # bits/s for the lossy codecs


FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", "audio/mpeg", True, "mp3", "libmp3lame", "s16p", 64_000),
    "opus": AudioFormat("opus", "audio/ogg", True, "ogg", "libopus", "s16", 48_000),
    "aac": AudioFormat("aac", "audio/aac", True, "adts", "aac", "fltp", 64_000),
    "flac": AudioFormat("flac", "audio/flac", False, "flac", "flac", "s16"),
    "wav": AudioFormat("wav", "audio/wav", True),
    "pcm": AudioFormat("pcm", "audio/pcm", True),
}


def audio_format(name: str) -> AudioFormat:
    """The format called `name` (case-insensitive); `OptionsError` names the supported ones."""
    fmt = FORMATS.get(str(name).lower())
    if fmt is None:
        raise OptionsError(f"unsupported response_format {name!r}; use one of {', '.join(FORMATS)}")
    return fmt


def content_type(name: str) -> str:
    return audio_format(name).content_type


def check_speed(speed: float) -> float:
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not math.isfinite(speed) \
            or not MIN_SPEED <= speed <= MAX_SPEED:
        raise OptionsError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed!r}")
    return float(speed)


def _pcm16(samples: Samples) -> np.ndarray:
    """Encoder input as an int16 numpy `[n]`: int16 passes as is, float goes through the
    original's conversion (`audio.float_to_int16`)."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    samples = samples.detach().reshape(-1).cpu()
    if samples.dtype != torch.int16:
        samples = float_to_int16(samples.float())
    return samples.numpy()


class Encoder(Protocol):
    def feed(self, samples: Samples) -> bytes: ...

    def finish(self) -> bytes: ...


class PCMEncoder:
    """Raw 16-bit little-endian mono, no header."""

    def feed(self, samples: Samples) -> bytes:
        return _pcm16(samples).astype("<i2").tobytes()

    def finish(self) -> bytes:
        return b""


def wav_header(data_bytes: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """44-byte PCM16 mono RIFF header; `data_bytes=0xFFFFFFFF` marks an unknown length."""
    riff = _UNKNOWN_LENGTH if data_bytes == _UNKNOWN_LENGTH else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class WavEncoder:
    """PCM16 wav; streamed with an unknown-length header, or whole with exact sizes."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, streaming: bool = True):
        self.sample_rate = sample_rate
        self.streaming = streaming
        self._header_sent = False
        self._buffer: list[bytes] = []

    def feed(self, samples: Samples) -> bytes:
        data = _pcm16(samples).astype("<i2").tobytes()
        if not self.streaming:
            self._buffer.append(data)
            return b""
        if not self._header_sent:
            self._header_sent = True
            return wav_header(_UNKNOWN_LENGTH, self.sample_rate) + data
        return data

    def finish(self) -> bytes:
        if self.streaming:
            return b"" if self._header_sent else wav_header(_UNKNOWN_LENGTH, self.sample_rate)
        data = b"".join(self._buffer)
        self._buffer.clear()
        return wav_header(len(data), self.sample_rate) + data


class _Sink:
    """Write-only file object for PyAV; having no `seek` makes ffmpeg treat the output as a stream."""

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _SeekableSink:
    """Seekable in-memory output, for muxers that rewrite their header at the end (flac)."""

    def __init__(self):
        self._io = io.BytesIO()

    def write(self, data) -> int:
        return self._io.write(bytes(data))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._io.seek(offset, whence)

    def tell(self) -> int:
        return self._io.tell()

    def take(self) -> bytes:
        return self._io.getvalue()


class CodecEncoder:
    """mp3 / opus / aac / flac through PyAV. Not thread-safe: one encoder per response."""

    def __init__(self, fmt: AudioFormat, sample_rate: int = SAMPLE_RATE):
        assert fmt.container and fmt.codec, f"{fmt.name} is not a codec format"
        self.format = fmt
        self._sink = _Sink() if fmt.streams else _SeekableSink()
        options = {"flush_packets": "1"}     # hand each packet to us at once, do not batch them
        if fmt.container == "ogg":
            options["page_duration"] = "20000"   # µs per Ogg page: 20 ms pages instead of 1 s
        self._container = av.open(self._sink, mode="w", format=fmt.container, buffer_size=4096,
                                  options=options)
        self._stream = self._container.add_stream(fmt.codec, rate=sample_rate, layout="mono")
        self._stream.format = fmt.sample_format
        if fmt.bit_rate:
            self._stream.bit_rate = fmt.bit_rate
        self._stream.time_base = Fraction(1, sample_rate)
        self._sample_rate = sample_rate
        self._pts = 0
        self._closed = False

    def _mux(self, frame: Optional[av.AudioFrame]) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def feed(self, samples: Samples) -> bytes:
        pcm = _pcm16(samples)
        if pcm.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.time_base = Fraction(1, self._sample_rate)
        frame.pts = self._pts
        self._pts += pcm.size
        self._mux(frame)
        return self._sink.take() if self.format.streams else b""

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        self._mux(None)
        self._container.close()
        return self._sink.take()


def open_encoder(name: str, sample_rate: int = SAMPLE_RATE, streaming: bool = True) -> Encoder:
    """An encoder for response format `name`. `streaming=False` only changes wav (exact header)."""
    fmt = audio_format(name)
    if fmt.name == "pcm":
        return PCMEncoder()
    if fmt.name == "wav":
        return WavEncoder(sample_rate, streaming=streaming)
    return CodecEncoder(fmt, sample_rate)


def _atempo_steps(speed: float) -> list[float]:
    """Split `speed` into factors atempo handles cleanly, e.g. 0.25 -> [0.5, 0.5]."""
    steps = []
    while speed < _ATEMPO_STEP_MIN:
        steps.append(_ATEMPO_STEP_MIN)
        speed /= _ATEMPO_STEP_MIN
    while speed > _ATEMPO_STEP_MAX:
        steps.append(_ATEMPO_STEP_MAX)
        speed /= _ATEMPO_STEP_MAX
    steps.append(speed)
    return steps


class TempoChanger:
    """Streaming tempo change without pitch change: float samples in, float samples out.

    The output is `1 / speed` times as long as the input (within a few ms at the end). With
    `speed == 1` it passes samples through untouched, so the default path stays bit-exact.
    """

    def __init__(self, speed: float, sample_rate: int = SAMPLE_RATE):
        self.speed = check_speed(speed)
        self._sample_rate = sample_rate
        self._pts = 0
        self._graph: Optional[av.filter.Graph] = None
        if self.speed != 1.0:
            graph = av.filter.Graph()
            node = graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                                     time_base=Fraction(1, sample_rate))
            for step in _atempo_steps(self.speed):
                nxt = graph.add("atempo", f"tempo={step!r}")
                node.link_to(nxt)
                node = nxt
            sink = graph.add("abuffersink")
            node.link_to(sink)
            graph.configure()
            self._graph = graph

    def _drain(self) -> torch.Tensor:
        out = []
        while True:
            try:
                out.append(self._graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0)

    def feed(self, samples: torch.Tensor) -> torch.Tensor:
        """`[n]` float32 (or int16) samples -> the tempo-changed float32 samples ready so far."""
        if self._graph is None:
            return samples
        x = samples.detach().reshape(-1).cpu()
        x = x.float() / 32768.0 if x.dtype == torch.int16 else x.float()
        if x.numel() == 0:
            return torch.zeros(0)
        frame = av.AudioFrame.from_ndarray(x.numpy()[None, :], format="flt", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.time_base = Fraction(1, self._sample_rate)
        frame.pts = self._pts
        self._pts += x.numel()
        self._graph.push(frame)
        return self._drain()

    def finish(self) -> torch.Tensor:
        if self._graph is None:
            return torch.zeros(0)
        self._graph.push(None)
        out = self._drain()
        self._graph = None
        return out


class SpeechEncoder:
    """Tempo change + format encoding for one response: `feed(float samples) -> bytes`."""

    def __init__(self, response_format: str, speed: float = 1.0, sample_rate: int = SAMPLE_RATE,
                 streaming: bool = True):
        self.format = audio_format(response_format)
        self._tempo = TempoChanger(speed, sample_rate)
        self._encoder = open_encoder(self.format.name, sample_rate, streaming=streaming)
        self.samples_out = 0                     # samples handed to the codec (after tempo)

    def feed(self, samples: torch.Tensor) -> bytes:
        stretched = self._tempo.feed(samples)
        self.samples_out += int(stretched.numel())
        return self._encoder.feed(stretched)

    def finish(self) -> bytes:
        tail = self._tempo.finish()
        self.samples_out += int(tail.numel())
        return self._encoder.feed(tail) + self._encoder.finish()
