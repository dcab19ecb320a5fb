"""config.yaml -> typed config: official files, presets, the tiny golden config, bad files."""

from __future__ import annotations

import pytest
import yaml

from indextts.config import DEFAULT_SPEAKER_ENCODER_CHANNELS, IndexTTSConfig
from indextts.errors import ConfigError

from conftest import GOLDEN, TINY


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_official_configs_equal_presets(version):
    parsed = IndexTTSConfig.from_yaml(GOLDEN / "configs" / f"indextts-{version}.yaml")
    preset = IndexTTSConfig.preset(version)
    assert parsed.gpt == preset.gpt
    assert parsed.bigvgan == preset.bigvgan
    assert parsed.version == version


def test_full_size_numbers():
    cfg = IndexTTSConfig.preset("1.5").gpt
    assert (cfg.layers, cfg.model_dim, cfg.heads) == (24, 1280, 20)
    assert (cfg.text_positions, cfg.mel_positions) == (602, 803)
    cfg10 = IndexTTSConfig.preset("1.0")
    assert (cfg10.gpt.layers, cfg10.gpt.model_dim, cfg10.gpt.max_mel_tokens) == (20, 1024, 605)
    assert cfg10.bigvgan.speaker_encoder_channels == DEFAULT_SPEAKER_ENCODER_CHANNELS
    assert cfg10.bigvgan.hop_length == 1024


def test_tiny_config_reads_speaker_encoder_channels():
    cfg = IndexTTSConfig.from_yaml(TINY / "config.yaml")
    assert cfg.gpt.model_dim == 32 and cfg.gpt.max_mel_tokens == 60 and cfg.gpt.number_text_tokens == 700
    assert cfg.gpt.condition.output_size == 16 and cfg.gpt.condition.attention_heads == 2
    assert cfg.bigvgan.speaker_encoder_channels == (16, 16, 16, 16, 48)
    assert cfg.bigvgan.upsample_initial_channel == 64


def _write(tmp_path, data) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _tiny_raw() -> dict:
    return yaml.safe_load((TINY / "config.yaml").read_text())


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        IndexTTSConfig.preset("2.0")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        IndexTTSConfig.from_yaml(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        IndexTTSConfig.from_yaml(_write(tmp_path, "gpt: [unclosed\n  - : :"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping at the top level"):
        IndexTTSConfig.from_yaml(_write(tmp_path, "- just\n- a list\n"))


def test_missing_key_is_named(tmp_path):
    raw = _tiny_raw()
    del raw["gpt"]["model_dim"]
    with pytest.raises(ConfigError, match=r"'gpt\.model_dim' is missing"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))


def test_missing_section_is_named(tmp_path):
    raw = _tiny_raw()
    del raw["bigvgan"]
    with pytest.raises(ConfigError, match="'bigvgan' is missing"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))


def test_wrong_type_is_named(tmp_path):
    raw = _tiny_raw()
    raw["gpt"]["layers"] = "two"
    with pytest.raises(ConfigError, match=r"'gpt\.layers' must be an integer"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))


def test_inconsistent_dims(tmp_path):
    raw = _tiny_raw()
    raw["bigvgan"]["gpt_dim"] = 64
    with pytest.raises(ConfigError, match="gpt_dim"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))
    raw = _tiny_raw()
    raw["gpt"]["heads"] = 3
    with pytest.raises(ConfigError, match="divisible"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))


def test_bad_speaker_channels(tmp_path):
    raw = _tiny_raw()
    raw["bigvgan"]["speaker_encoder_channels"] = [16, 16]
    with pytest.raises(ConfigError, match="5 widths"):
        IndexTTSConfig.from_yaml(_write(tmp_path, raw))
