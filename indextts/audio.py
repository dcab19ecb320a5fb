"""Reference audio: load, mix to mono, resample to 24 kHz, 100-band log-mel.

The constants are the original's `MelSpectrogramFeatures()` defaults; the original ignores the
config's mel section, and so do we. Decoding goes through soundfile (libsndfile: wav, flac, ogg
vorbis/opus, mp3, aiff, ...), which returns float32 in [-1, 1] exactly as the original's loader did.
It reads in blocks and stops at the reference duration limit, so the memory a reference costs
follows that limit, not the file's compression ratio.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio

from indextts.errors import AudioError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
N_FFT = 1024
HOP_LENGTH = 256
WIN_LENGTH = 1024
N_MELS = 100
LOG_FLOOR = 1e-7

MIN_REFERENCE_SECONDS = 0.5
DEFAULT_MAX_REFERENCE_SECONDS = 60.0
# Peak amplitude below which a reference counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

# What a reference file's header may declare; anything else is refused before decoding.
MAX_CHANNELS = 8
MIN_SOURCE_RATE = 8000
MAX_SOURCE_RATE = 384000
READABLE_FORMATS = "wav, flac, ogg, mp3, aiff, ..."
# Samples (frames x channels) per read: decoding holds one block beside the mono result.
_BLOCK_SAMPLES = 1 << 16

AudioSource = Union[str, Path, bytes, BinaryIO]


@dataclass(frozen=True)
class ReferenceLimits:
    """What reference audio we accept. Longer than `max_seconds` is truncated with a warning:
    a voice prompt is only a timbre sample, and the conformer's position table ends at ~106 s."""

    min_seconds: float = MIN_REFERENCE_SECONDS
    max_seconds: float = DEFAULT_MAX_REFERENCE_SECONDS

    def __post_init__(self):
        if not 0 < self.min_seconds < self.max_seconds:
            raise ValueError("need 0 < min_seconds < max_seconds")
        if self.max_seconds > 100.0:
            raise ValueError("max_seconds above 100 s exceeds the conditioning encoder's position table")


def _describe(source: AudioSource) -> str:
    """How messages name a source: a path by its file name only (never the server's directories)."""
    return Path(source).name if isinstance(source, (str, Path)) else "uploaded audio"


def _open(source: AudioSource, name: str) -> sf.SoundFile:
    """Open `source` for reading its header; nothing is decoded yet."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"reference audio not found: {name}")
        handle: object = path
    elif isinstance(source, (bytes, bytearray)):
        handle = io.BytesIO(source)
    else:
        handle = source
    try:
        return sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        # libsndfile's own text names the file object or the server path: keep it out of the message.
        raise AudioError(f"{name} is not a readable audio file ({READABLE_FORMATS} are supported)") from e


def _check_header(f: sf.SoundFile, name: str) -> None:
    """Refuse parameters no voice recording has, before a block is sized from them."""
    if not 1 <= f.channels <= MAX_CHANNELS:
        raise AudioError(f"{name} declares {f.channels} channels; reference audio may have at most "
                         f"{MAX_CHANNELS}")
    if not MIN_SOURCE_RATE <= f.samplerate <= MAX_SOURCE_RATE:
        raise AudioError(f"{name} declares a sample rate of {f.samplerate} Hz; reference audio must be "
                         f"sampled at {MIN_SOURCE_RATE} to {MAX_SOURCE_RATE} Hz")


@dataclass(frozen=True)
class Decoded:
    """The decoded head of a reference, mixed to mono."""

    mono: torch.Tensor      # float32 `[1, frames]` at `sample_rate`, at most the limit's duration
    sample_rate: int
    peak: float             # largest |sample| over every channel of the kept frames
    truncated: bool         # the file goes on after `mono`
    declared_frames: int    # the header's frame count (may be unknown, 0 or wrong)


def decode_audio(source: AudioSource, max_seconds: float = DEFAULT_MAX_REFERENCE_SECONDS) -> Decoded:
    """Decode at most the first `max_seconds` of any libsndfile format, in blocks mixed down to
    mono as they are read: memory follows the duration limit, not the file's compression ratio."""
    name = _describe(source)
    with _open(source, name) as f:
        _check_header(f, name)
        sr, channels = int(f.samplerate), int(f.channels)
        max_frames = int(math.floor(max_seconds * sr))
        block = max(1, _BLOCK_SAMPLES // channels)
        parts, peak, kept = [], 0.0, 0
        while kept < max_frames:
            data = _read_block(f, min(block, max_frames - kept), name)
            if len(data) == 0:
                break
            if not np.isfinite(data).all():
                raise AudioError(f"{name} contains NaN or infinite samples")
            peak = max(peak, float(np.abs(data).max()))
            parts.append(torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True))
            kept += len(data)
        truncated = kept >= max_frames and len(_read_block(f, 1, name)) > 0
        mono = torch.cat(parts, dim=1) if parts else torch.zeros(1, 0)
        return Decoded(mono, sr, peak, truncated, int(f.frames))


def _read_block(f: sf.SoundFile, frames: int, name: str) -> np.ndarray:
    try:
        return f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"{name} is damaged: decoding stopped partway through") from e


def to_mono_24k(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`[channels, frames]` at any rate -> `[1, frames']` at 24 kHz (torchaudio's default sinc)."""
    mono = audio.mean(dim=0, keepdim=True)
    if sample_rate != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, sample_rate, SAMPLE_RATE)
    return mono


def load_reference(source: AudioSource, limits: ReferenceLimits = ReferenceLimits()) -> torch.Tensor:
    """Load reference audio for voice cloning as `[1, n]` float32 at 24 kHz.

    Raises `AudioError` for files that are not audio, declare implausible channels or sample
    rates, are empty, silent or shorter than `limits.min_seconds`; audio longer than
    `limits.max_seconds` is truncated (with a warning) and never decoded past that point.
    """
    name = _describe(source)
    audio = decode_audio(source, limits.max_seconds)
    frames, sr = audio.mono.shape[1], audio.sample_rate
    if frames == 0:
        raise AudioError(f"{name} is empty (no samples)")
    seconds = frames / sr
    if seconds < limits.min_seconds:
        raise AudioError(f"{name} is {seconds:.2f} s long; a reference needs at least "
                         f"{limits.min_seconds} s of speech (3-10 s works best)")
    if audio.truncated:
        if audio.declared_frames > frames:
            logger.warning("%s is %.1f s long; using its first %.1f s", name, audio.declared_frames / sr,
                           limits.max_seconds)
        else:
            logger.warning("%s is longer than %.1f s; using its first %.1f s", name, limits.max_seconds,
                           limits.max_seconds)
    if audio.peak < SILENCE_PEAK:
        raise AudioError(f"{name} is silent (peak below {SILENCE_PEAK}); record some speech")
    return to_mono_24k(audio.mono, sr)


class MelSpectrogram(torch.nn.Module):
    """`[B, n]` 24 kHz audio -> `[B, 100, frames]` natural-log magnitude mel (93.75 frames/s)."""

    def __init__(self):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
            n_mels=N_MELS, f_min=0.0, f_max=None, power=1.0, center=True, pad_mode="reflect",
            norm=None, mel_scale="htk")

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.mel(audio), min=LOG_FLOOR))


@functools.lru_cache(maxsize=8)
def _mel_module(device: str) -> MelSpectrogram:
    return MelSpectrogram().to(device)


def mel_spectrogram(audio: torch.Tensor) -> torch.Tensor:
    """`[1, n]` float32 24 kHz audio -> `[1, 100, frames]` log-mel, as the original computes it."""
    with torch.no_grad():
        return _mel_module(str(audio.device))(audio.float())


def reference_mel(source: AudioSource, limits: ReferenceLimits = ReferenceLimits()) -> torch.Tensor:
    """Load a reference and compute its mel in one step: `[1, 100, frames]`."""
    return mel_spectrogram(load_reference(source, limits))


def float_to_int16(wav: torch.Tensor) -> torch.Tensor:
    """The original's output conversion, float in [-1, 1] -> int16: scale by 32767, clamp to
    ±32767 (never -32768), then a cast that truncates toward zero (0.99999 -> 32766)."""
    return torch.clamp(32767.0 * wav, -32767.0, 32767.0).to(torch.int16)


def write_wav(path: str | Path, samples: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM; `samples` is int16 `[n]` or float in [-1, 1]."""
    if samples.dtype != torch.int16:
        samples = float_to_int16(samples)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples.reshape(-1).cpu().numpy(), sample_rate, subtype="PCM_16", format="WAV")
