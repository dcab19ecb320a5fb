"""Named voices: presets from `speaker.json` and uploaded voices, both stored under one directory.

Layout of `voices_dir` (shared by every replica; on a cluster, a shared volume):

```
voices_dir/
  speaker.json                 presets: {"name": ["relative/a.wav", "relative/b.wav"], ...}
  <any preset audio files>     paths in speaker.json are relative to voices_dir
  uploads/<name>/voice.json    one uploaded voice: its name, creation time and file list
  uploads/<name>/01-a.wav ...  the uploaded reference files, as uploaded
```

The `uploads/` directory *is* the index: a voice exists exactly when `uploads/<name>/voice.json`
exists. Uploads are written into a hidden temporary directory and renamed into place, deletes
rename the directory away before removing it, so every process sees a voice either complete or
not at all, and no index file can go stale between replicas.

Every audio file a voice refers to must lie inside `voices_dir` after resolving symlinks; the
same rule guards the `/tts_url` route's client-supplied paths.

Mixing: `"alice+bob"` averages the voices (each voice weighs the same, whatever its number of
files); `"alice:3+bob:1"` weights them 3:1. A voice with several files is itself a mix of its
files with equal weights (the original's `speaker.json` behaviour).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from indextts.audio import ReferenceLimits, load_reference
from indextts.errors import AudioError, VoiceError
from indextts.types import VoiceSpec

logger = logging.getLogger(__name__)

PRESETS_FILE = "speaker.json"
UPLOADS_DIR = "uploads"
VOICE_FILE = "voice.json"
MIX_SEPARATOR = "+"
WEIGHT_SEPARATOR = ":"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_FILES = 8
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
_MAX_MIX = 8
_SPEC_CACHE_SIZE = 256


class VoiceNotFoundError(VoiceError):
    """No voice (preset or upload) has this name, or a referenced file does not exist."""


class VoiceExistsError(VoiceError):
    """An upload would replace an existing voice."""


@dataclass(frozen=True)
class VoiceInfo:
    """What `list()` reports about one voice."""

    name: str
    source: str                      # "preset" or "upload"
    files: tuple[str, ...]           # paths relative to voices_dir
    created_at: int = 0              # Unix seconds (uploads), 0 for presets


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise VoiceError(f"invalid voice name {name!r}: use 1-64 characters from letters, digits, "
                         f"'_', '-' and '.', starting with a letter or digit")
    return name


def parse_mix(text: str) -> list[tuple[str, float]]:
    """`"alice"`, `"alice+bob"` or `"alice:3+bob:1"` -> [(name, weight), ...]."""
    if not isinstance(text, str) or not text.strip():
        raise VoiceError("voice is empty; give a voice name (GET /v1/audio/voices lists them)")
    parts = [p.strip() for p in text.split(MIX_SEPARATOR)]
    if len(parts) > _MAX_MIX:
        raise VoiceError(f"a voice mix may combine at most {_MAX_MIX} voices, got {len(parts)}")
    mix = []
    for part in parts:
        name, sep, weight_text = part.partition(WEIGHT_SEPARATOR)
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight) or weight <= 0:
                raise VoiceError(f"invalid weight {weight_text!r} in voice {text!r}; "
                                 f"write e.g. 'alice:0.7+bob:0.3' with positive numbers")
        mix.append((check_name(name.strip()), weight))
    return mix


class VoiceRegistry:
    """Presets and uploaded voices under `voices_dir`; safe to use from several threads and
    processes at once. Blocking (file I/O): call it off the event loop."""

    def __init__(self, voices_dir: str | Path, *, max_files: int = DEFAULT_MAX_FILES,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 limits: ReferenceLimits = ReferenceLimits()):
        self.root = Path(voices_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / UPLOADS_DIR).mkdir(exist_ok=True)
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.limits = limits
        self._lock = threading.Lock()
        self._presets: dict[str, tuple[str, ...]] = {}
        self._presets_stamp: Optional[tuple[int, int]] = None
        self._broken_stamp: Optional[tuple[int, int]] = None
        self._specs: dict[tuple, VoiceSpec] = {}
        self._load_presets(strict=True)

    # -- presets ------------------------------------------------------------------------------

    @property
    def presets_path(self) -> Path:
        return self.root / PRESETS_FILE

    def _read_presets(self) -> dict[str, tuple[str, ...]]:
        try:
            data = json.loads(self.presets_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VoiceError(f"{self.presets_path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise VoiceError(f"{self.presets_path} must map voice names to lists of audio files, "
                             f'e.g. {{"alice": ["alice/1.wav"]}}')
        presets = {}
        for name, files in data.items():
            check_name(name)
            if isinstance(files, str):
                files = [files]
            if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                raise VoiceError(f"{self.presets_path}: voice {name!r} needs a non-empty list of file paths")
            for f in files:
                self._inside(f, what=f"{self.presets_path.name} voice {name!r}")
            presets[name] = tuple(files)
        return presets

    def _load_presets(self, strict: bool = False) -> dict[str, tuple[str, ...]]:
        """Re-read speaker.json when it changed; a broken edit keeps the last good presets."""
        try:
            st = self.presets_path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._presets_stamp or (stamp is not None and stamp == self._broken_stamp):
                return self._presets
        if stamp is None:
            presets: dict[str, tuple[str, ...]] = {}
        else:
            try:
                presets = self._read_presets()
            except VoiceError as e:
                if strict:
                    raise
                with self._lock:      # said once per broken version of the file, not per request
                    self._broken_stamp = stamp
                logger.error("keeping the previous presets: %s", e)
                return self._presets
        with self._lock:
            self._presets, self._presets_stamp = presets, stamp
        return presets

    # -- paths --------------------------------------------------------------------------------

    def _inside(self, path: str, what: str = "audio path") -> Path:
        """`path` (relative to voices_dir, or absolute) resolved, if it stays inside voices_dir."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise VoiceError(f"{what}: invalid path {path!r}")
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        resolved = Path(os.path.realpath(candidate))
        if resolved != self.root and self.root not in resolved.parents:
            # Same message whether or not the file exists outside: no probing the server's disk.
            raise VoiceError(f"{what}: {path!r} is outside the voices directory; only files under "
                             f"voices_dir may be used")
        return resolved

    def _existing_file(self, path: str, what: str) -> Path:
        resolved = self._inside(path, what)
        if not resolved.is_file():
            raise VoiceNotFoundError(f"{what}: {path!r} does not exist in the voices directory")
        return resolved

    def resolve_paths(self, paths: Sequence[str]) -> VoiceSpec:
        """A voice from reference files named by the client (the `/tts_url` route). Only files
        inside voices_dir are allowed: `..`, absolute paths and symlinks leading out are refused."""
        if isinstance(paths, str):
            paths = [paths]
        if not paths:
            raise VoiceError("audio_paths is empty; give at least one reference file")
        if len(paths) > self.max_files:
            raise VoiceError(f"at most {self.max_files} reference files per request, got {len(paths)}")
        files = tuple(str(self._existing_file(p, "audio_paths")) for p in paths)
        return self._spec(files, None, name="")

    # -- voices -------------------------------------------------------------------------------

    def _upload_dir(self, name: str) -> Path:
        return self.root / UPLOADS_DIR / name

    def _read_upload(self, name: str) -> Optional[dict]:
        try:
            meta = json.loads((self._upload_dir(name) / VOICE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable uploaded voice %s: %s", name, e)
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), list):
            logger.warning("ignoring uploaded voice %s: malformed %s", name, VOICE_FILE)
            return None
        return meta

    def files_of(self, name: str) -> tuple[Path, ...]:
        """Absolute reference paths of one named voice (preset first, then uploads)."""
        check_name(name)
        presets = self._load_presets()
        if name in presets:
            return tuple(self._existing_file(f, f"voice {name!r}") for f in presets[name])
        meta = self._read_upload(name)
        if meta is None:
            raise VoiceNotFoundError(f"unknown voice {name!r}; GET /v1/audio/voices lists the voices "
                                     f"(or upload one with POST /v1/audio/voices)")
        rel = [f"{UPLOADS_DIR}/{name}/{f}" for f in meta["files"]]
        return tuple(self._existing_file(f, f"voice {name!r}") for f in rel)

    def resolve(self, voice: str) -> VoiceSpec:
        """`"alice"`, `"alice+bob"` or `"alice:3+bob:1"` -> a VoiceSpec over their files."""
        weights: dict[str, float] = {}
        mix = parse_mix(voice)
        total = sum(w for _, w in mix)
        for name, weight in mix:
            files = self.files_of(name)
            for f in files:   # a voice's weight is shared by its files
                weights[str(f)] = weights.get(str(f), 0.0) + weight / total / len(files)
        refs = tuple(weights)
        values = tuple(weights[r] for r in refs)
        uniform = max(values) - min(values) < 1e-12
        return self._spec(refs, None if uniform else values, name=voice)

    def _spec(self, refs: tuple[str, ...], weights: Optional[tuple[float, ...]], name: str) -> VoiceSpec:
        """One VoiceSpec per (files, weights, file versions): its content key is hashed once."""
        try:
            stamp = tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, refs))
        except FileNotFoundError as e:
            gone = os.path.relpath(e.filename, self.root)     # never the server's absolute path
            raise VoiceNotFoundError(f"a reference file of voice {name!r} disappeared: {gone}") from e
        cache_key = (refs, weights, stamp, name)
        with self._lock:
            spec = self._specs.get(cache_key)
        if spec is None:
            spec = VoiceSpec(references=refs, weights=weights, name=name)
            _ = spec.key     # hash the files now, off the caller's hot path next time
            with self._lock:
                if len(self._specs) >= _SPEC_CACHE_SIZE:
                    self._specs.pop(next(iter(self._specs)))
                self._specs[cache_key] = spec
        return spec

    def list(self) -> list[VoiceInfo]:
        """Every voice, presets and uploads, sorted by name."""
        infos = {name: VoiceInfo(name, "preset", files) for name, files in self._load_presets().items()}
        uploads = self.root / UPLOADS_DIR
        for entry in sorted(uploads.iterdir()) if uploads.is_dir() else []:
            if entry.name.startswith(".") or entry.name in infos or not NAME_PATTERN.match(entry.name):
                continue
            meta = self._read_upload(entry.name)
            if meta is not None:
                files = tuple(f"{UPLOADS_DIR}/{entry.name}/{f}" for f in meta["files"])
                infos[entry.name] = VoiceInfo(entry.name, "upload", files, int(meta.get("created_at", 0)))
        return [infos[k] for k in sorted(infos)]

    def info(self, name: str) -> VoiceInfo:
        for voice in self.list():
            if voice.name == name:
                return voice
        raise VoiceNotFoundError(f"unknown voice {name!r}")

    def add(self, name: str, files: Sequence[tuple[str, bytes]]) -> VoiceInfo:
        """Store an uploaded voice. Each file must be usable reference audio (`AudioError`
        otherwise); the name must be new (`VoiceExistsError`)."""
        check_name(name)
        if not files:
            raise VoiceError("upload at least one reference audio file")
        if len(files) > self.max_files:
            raise VoiceError(f"at most {self.max_files} reference files per voice, got {len(files)}")
        if name in self._load_presets():
            raise VoiceExistsError(f"voice {name!r} is a preset from {PRESETS_FILE}; choose another name")
        stored = []
        for i, (filename, data) in enumerate(files):
            label = filename or f"file {i + 1}"
            if len(data) > self.max_file_bytes:
                raise AudioError(f"{label} is {len(data)} bytes; the limit is {self.max_file_bytes}")
            try:
                load_reference(data, self.limits)
            except AudioError as e:
                raise AudioError(f"{label}: {e}") from e
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename or "").name).lstrip(".")[:60]
            stored.append((f"{i + 1:02d}-{stem or 'reference'}", data))
        final = self._upload_dir(name)
        if final.exists():
            raise VoiceExistsError(f"voice {name!r} already exists; delete it first to replace it")
        tmp = self.root / UPLOADS_DIR / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for filename, data in stored:
                (tmp / filename).write_bytes(data)
            created = int(time.time())
            meta = {"name": name, "created_at": created, "files": [f for f, _ in stored]}
            (tmp / VOICE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            try:
                os.rename(tmp, final)   # atomic; fails if another process created the name first
            except OSError as e:
                raise VoiceExistsError(f"voice {name!r} already exists; delete it first to replace it") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("stored uploaded voice %s (%d file(s))", name, len(stored))
        return VoiceInfo(name, "upload", tuple(f"{UPLOADS_DIR}/{name}/{f}" for f, _ in stored), created)

    def delete(self, name: str) -> None:
        """Remove an uploaded voice (`VoiceNotFoundError` if none; presets are read-only)."""
        check_name(name)
        if name in self._load_presets():
            raise VoiceError(f"voice {name!r} is a preset; remove it from {PRESETS_FILE} instead")
        src = self._upload_dir(name)
        trash = self.root / UPLOADS_DIR / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(src, trash)    # atomic: other processes see it gone at once
        except FileNotFoundError as e:
            raise VoiceNotFoundError(f"unknown voice {name!r}") from e
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted uploaded voice %s", name)
