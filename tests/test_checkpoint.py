"""Model directory resolution, strict loading errors and `indextts check`."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from indextts.checkpoint import CheckpointInfo, check_model_dir, load_gpt, load_vocoder, resolve_model_dir
from indextts.cli import main
from indextts.errors import CheckpointError, ConfigError, ModelDirError

from conftest import GOLDEN, TINY


@pytest.fixture
def tiny_copy(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(TINY, dst, ignore=shutil.ignore_patterns("expected", "*.wav"))
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        CheckpointInfo.from_dir(tmp_path / "nowhere")


def test_file_instead_of_dir():
    with pytest.raises(ModelDirError, match="is a file"):
        resolve_model_dir(TINY / "config.yaml")


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelDirError, match="no config.yaml"):
        CheckpointInfo.from_dir(tmp_path)


@pytest.mark.parametrize("name", ["gpt.pth", "bigvgan_generator.pth", "bpe.model"])
def test_missing_files_are_named(tiny_copy, name):
    (tiny_copy / name).unlink()
    with pytest.raises(ModelDirError, match=name.replace(".", r"\.")):
        CheckpointInfo.from_dir(tiny_copy)


def test_malformed_config(tiny_copy):
    (tiny_copy / "config.yaml").write_text("gpt: {model_dim: 32}\n")
    with pytest.raises(ConfigError, match=r"'gpt\.\w+' is missing"):
        CheckpointInfo.from_dir(tiny_copy)


def test_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelDirError, match="offline|unreachable"):
        resolve_model_dir("IndexTeam/IndexTTS-1.5")


def test_hub_id_downloads_through_huggingface_hub(monkeypatch, tiny_copy):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(tiny_copy)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    info = CheckpointInfo.from_dir("IndexTeam/IndexTTS-1.5")
    assert info.model_dir == tiny_copy
    assert calls[0][0] == "IndexTeam/IndexTTS-1.5" and "gpt.pth" in calls[0][1]


def test_truncated_checkpoint(tiny_copy):
    data = (tiny_copy / "gpt.pth").read_bytes()
    (tiny_copy / "gpt.pth").write_bytes(data[: len(data) // 2])
    info = CheckpointInfo.from_dir(tiny_copy)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_gpt(info)


def test_not_a_checkpoint(tiny_copy):
    (tiny_copy / "bigvgan_generator.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_vocoder(CheckpointInfo.from_dir(tiny_copy))


def _rewrite_gpt(path, edit):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("model", sd)
    edit(sd)
    torch.save(sd, path)


def test_missing_unexpected_and_reshaped_keys_are_named(tiny_copy):
    info = CheckpointInfo.from_dir(tiny_copy)
    _rewrite_gpt(info.gpt_path, lambda sd: sd.pop("final_norm.bias"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): final_norm\.bias") as e:
        load_gpt(info)
    assert e.value.missing == ["final_norm.bias"]

    _rewrite_gpt(info.gpt_path, lambda sd: sd.__setitem__("final_norm.bias", torch.zeros(32)))
    _rewrite_gpt(info.gpt_path, lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): extra\.weight"):
        load_gpt(info)

    _rewrite_gpt(info.gpt_path, lambda sd: (sd.pop("extra.weight"),
                                            sd.__setitem__("mel_head.bias", torch.zeros(10))))
    with pytest.raises(CheckpointError, match=r"shape mismatch for mel_head\.bias: checkpoint \[10\], model \[8194\]"):
        load_gpt(info)


def test_wrong_config_for_weights(tiny_copy):
    raw = yaml.safe_load((tiny_copy / "config.yaml").read_text())
    raw["gpt"]["layers"] = 3
    (tiny_copy / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CheckpointError, match=r"missing key\(s\): gpt\.h\.2\."):
        load_gpt(CheckpointInfo.from_dir(tiny_copy))


def test_model_dict_container_accepted(tiny_copy):
    sd = torch.load(tiny_copy / "gpt.pth", map_location="cpu", weights_only=True)
    torch.save({"model": sd}, tiny_copy / "gpt.pth")
    model = load_gpt(CheckpointInfo.from_dir(tiny_copy))
    torch.testing.assert_close(model.state_dict()["mel_head.bias"], sd["mel_head.bias"])


def test_check_ok(capsys):
    assert main(["check", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "result: loadable" in out and "all keys and shapes match" in out


def test_check_reports_every_problem(tiny_copy, capsys):
    (tiny_copy / "bpe.model").unlink()
    _rewrite_gpt(tiny_copy / "gpt.pth", lambda sd: sd.pop("text_head.weight"))
    assert main(["check", str(tiny_copy)]) == 1
    out = capsys.readouterr().out
    assert "missing file: bpe.model" in out
    assert "text_head.weight" in out
    assert "NOT loadable (2 problem(s))" in out


def test_check_full_size_config_against_tiny_weights(tiny_copy, capsys):
    shutil.copy(GOLDEN / "configs" / "indextts-1.5.yaml", tiny_copy / "config.yaml")
    assert main(["check", str(tiny_copy)]) == 1
    out = capsys.readouterr().out
    assert "shape mismatch" in out and "1.0 vs 1.5" in out


def test_check_missing_dir(tmp_path, capsys):
    assert main(["check", str(tmp_path / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "check" in out
