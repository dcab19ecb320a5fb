"""The voice registry: presets, uploads shared between processes, mixing, and path confinement."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from indextts.errors import AudioError, VoiceError
from indextts.voices import VoiceExistsError, VoiceNotFoundError, VoiceRegistry, parse_mix


@pytest.fixture
def voices_dir(tmp_path, tiny_dir) -> Path:
    root = tmp_path / "voices"
    (root / "refs").mkdir(parents=True)
    shutil.copy(tiny_dir / "ref_a.wav", root / "refs" / "a.wav")
    shutil.copy(tiny_dir / "ref_b.wav", root / "refs" / "b.wav")
    (root / "speaker.json").write_text(json.dumps({"alice": ["refs/a.wav"], "bob": ["refs/b.wav"],
                                                   "duo": ["refs/a.wav", "refs/b.wav"]}))
    return root


@pytest.fixture
def registry(voices_dir) -> VoiceRegistry:
    return VoiceRegistry(voices_dir)


def test_presets_resolve_to_absolute_paths_inside_the_directory(registry, voices_dir):
    spec = registry.resolve("alice")
    assert spec.references == (str((voices_dir / "refs/a.wav").resolve()),)
    assert spec.weights is None and spec.name == "alice"
    assert [(v.name, v.source) for v in registry.list()] == [("alice", "preset"), ("bob", "preset"),
                                                              ("duo", "preset")]


def test_a_mix_of_voices_equals_the_preset_with_both_files(registry):
    mix, duo = registry.resolve("alice+bob"), registry.resolve("duo")
    assert mix.references == duo.references and mix.weights is None and duo.weights is None
    assert mix.key == duo.key            # same conditioning, computed once by the stages
    assert registry.resolve("alice") is registry.resolve("alice")   # cached, hashed once


def test_weighted_mix_and_voice_weights_are_shared_by_their_files(registry):
    spec = registry.resolve("alice:3+bob:1")
    assert spec.weights == pytest.approx((0.75, 0.25))
    # duo has two files: together they weigh what bob weighs alone.
    spec = registry.resolve("duo+bob")
    assert dict(zip(spec.references, spec.weights)) == pytest.approx(
        {spec.references[0]: 0.25, spec.references[1]: 0.75})


@pytest.mark.parametrize("bad", ["", " ", "alice+", "alice:0+bob", "alice:x", "../x", "a/b", "alice:-1"])
def test_malformed_voice_strings_are_voice_errors(registry, bad):
    with pytest.raises(VoiceError):
        registry.resolve(bad)


def test_unknown_voice_names_the_way_out(registry):
    with pytest.raises(VoiceNotFoundError, match="GET /v1/audio/voices"):
        registry.resolve("carol")
    with pytest.raises(VoiceNotFoundError):
        registry.resolve("alice+carol")


def test_parse_mix():
    assert parse_mix("a") == [("a", 1.0)]
    assert parse_mix("a + b:2") == [("a", 1.0), ("b", 2.0)]


def test_upload_round_trip_is_seen_by_another_process(registry, voices_dir, tiny_dir):
    data = (tiny_dir / "ref_a.wav").read_bytes()
    info = registry.add("carol", [("../../evil name.wav", data), ("", data)])
    assert info.source == "upload" and len(info.files) == 2
    assert all("/" not in Path(f).name and ".." not in f for f in info.files)
    other = VoiceRegistry(voices_dir)       # another replica: only the directory is shared
    spec = other.resolve("carol")
    assert len(spec.references) == 2 and all(Path(r).read_bytes() == data for r in spec.references)
    assert "carol" in [v.name for v in other.list()]
    other.delete("carol")
    with pytest.raises(VoiceNotFoundError):
        registry.resolve("carol")
    assert not [p for p in (voices_dir / "uploads").iterdir()]   # no temp or trash left behind


def test_uploads_are_validated_and_never_replace_a_voice(registry, tiny_dir):
    data = (tiny_dir / "ref_b.wav").read_bytes()
    with pytest.raises(AudioError, match="junk.wav"):
        registry.add("dave", [("junk.wav", b"RIFF not really audio")])
    with pytest.raises(AudioError, match="silent"):
        registry.add("dave", [("quiet.wav", _wav_bytes([0.0] * 24000))])
    with pytest.raises(AudioError, match="at least"):
        registry.add("dave", [("short.wav", _wav_bytes([0.1] * 2400))])
    assert "dave" not in [v.name for v in registry.list()]
    with pytest.raises(VoiceError):
        registry.add("dave", [])
    with pytest.raises(VoiceError, match="invalid voice name"):
        registry.add("../dave", [("a.wav", data)])
    with pytest.raises(VoiceExistsError, match="preset"):
        registry.add("alice", [("a.wav", data)])
    registry.add("dave", [("a.wav", data)])
    with pytest.raises(VoiceExistsError, match="already exists"):
        registry.add("dave", [("a.wav", data)])
    with pytest.raises(VoiceError, match="preset"):
        registry.delete("alice")
    with pytest.raises(VoiceNotFoundError):
        registry.delete("nobody")


def test_too_many_or_too_large_files_are_refused(voices_dir, tiny_dir):
    registry = VoiceRegistry(voices_dir, max_files=2, max_file_bytes=1000)
    data = (tiny_dir / "ref_a.wav").read_bytes()
    with pytest.raises(VoiceError, match="at most 2"):
        registry.add("eve", [("a.wav", data)] * 3)
    with pytest.raises(AudioError, match="limit"):
        registry.add("eve", [("a.wav", data)])


def test_tts_url_paths_are_confined_to_the_voices_directory(registry, voices_dir, tmp_path):
    inside = registry.resolve_paths(["refs/a.wav"])
    assert inside.references == (str((voices_dir / "refs/a.wav").resolve()),)
    assert registry.resolve_paths([str(voices_dir / "refs/b.wav")]).references[0].endswith("b.wav")
    secret = tmp_path / "secret.wav"
    shutil.copy(voices_dir / "refs/a.wav", secret)
    os.symlink(secret, voices_dir / "refs" / "link.wav")
    os.symlink(tmp_path, voices_dir / "escape")
    for bad in ["../secret.wav", str(secret), "refs/../../secret.wav", "refs/link.wav",
                "escape/secret.wav", "/etc/passwd", "refs/a.wav\x00.txt"]:
        with pytest.raises(VoiceError) as err:
            registry.resolve_paths([bad])
        assert not isinstance(err.value, VoiceNotFoundError), bad   # refused, not probed
    with pytest.raises(VoiceNotFoundError):
        registry.resolve_paths(["refs/missing.wav"])
    with pytest.raises(VoiceError):
        registry.resolve_paths([])


def test_symlinks_that_stay_inside_are_fine(registry, voices_dir):
    os.symlink(voices_dir / "refs" / "a.wav", voices_dir / "refs" / "alias.wav")
    assert registry.resolve_paths(["refs/alias.wav"]).references[0].endswith("a.wav")


def test_presets_must_stay_inside_and_a_bad_edit_keeps_the_old_ones(voices_dir, caplog):
    (voices_dir / "speaker.json").write_text(json.dumps({"x": ["../../etc/passwd"]}))
    with pytest.raises(VoiceError, match="outside"):
        VoiceRegistry(voices_dir)
    (voices_dir / "speaker.json").write_text(json.dumps({"alice": ["refs/a.wav"]}))
    registry = VoiceRegistry(voices_dir)
    (voices_dir / "speaker.json").write_text("{not json")
    with caplog.at_level("ERROR", logger="indextts.voices"):
        for _ in range(3):
            assert [v.name for v in registry.list()] == ["alice"]
    said = [r for r in caplog.records if "keeping the previous presets" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None      # once per broken file, no traceback
    (voices_dir / "speaker.json").write_text(json.dumps({"alice": "refs/a.wav", "bob": ["refs/b.wav"]}))
    assert [v.name for v in registry.list()] == ["alice", "bob"]


def test_a_missing_speaker_json_means_no_presets(tmp_path):
    registry = VoiceRegistry(tmp_path / "new")
    assert registry.list() == []
    assert (tmp_path / "new" / "uploads").is_dir()


def _wav_bytes(samples) -> bytes:
    import io
    import numpy as np
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), 24000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_the_readme_try_out_voices_resolve():
    """`serve run ... voices_dir=examples/voices` (README) serves the voices its curl examples use."""
    registry = VoiceRegistry(Path(__file__).parent.parent / "examples" / "voices")
    assert {v.name for v in registry.list()} >= {"alice", "bob"}
    for name in ("alice", "bob", "alice+bob"):
        assert registry.resolve(name).references
