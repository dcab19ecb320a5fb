"""The one place that resolves a model directory and loads weights.

A model directory is the official IndexTTS layout (`config.yaml`, `gpt.pth`,
`bigvgan_generator.pth`, `bpe.model`); it may also be named by a Hugging Face hub id such as
`IndexTeam/IndexTTS-1.5`, which is downloaded once into the hub cache.

Loading is strict: every stored tensor must land in a parameter or buffer of ours with the same
shape, and every parameter of ours must be stored. Violations raise `CheckpointError` naming the
keys, so a wrong or truncated file never yields a silently half-random model.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from torch import nn

from indextts.config import IndexTTSConfig
from indextts.errors import CheckpointError, ConfigError, ModelDirError

logger = logging.getLogger(__name__)

HUB_ALLOW_PATTERNS = ("config.yaml", "gpt.pth", "bigvgan_generator.pth", "bpe.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Non-persistent attention-mask buffers that older transformers versions stored in GPT-2 blocks.
GPT_IGNORED_KEYS = re.compile(r"^gpt\.h\.\d+\.attn\.(bias|masked_bias)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """Resolved paths of one checkpoint directory and its parsed config."""

    model_dir: Path
    config: IndexTTSConfig

    @property
    def gpt_path(self) -> Path:
        return self.model_dir / self.config.gpt_checkpoint

    @property
    def bigvgan_path(self) -> Path:
        return self.model_dir / self.config.bigvgan_checkpoint

    @property
    def bpe_path(self) -> Path:
        return self.model_dir / self.config.bpe_model

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, require_weights: bool = True) -> "CheckpointInfo":
        """Resolve `model_dir` (a directory or hub id) and check that the files inference needs exist."""
        root = resolve_model_dir(model_dir)
        cfg_path = root / "config.yaml"
        if not cfg_path.is_file():
            raise ModelDirError(f"{root} has no config.yaml; expected the official IndexTTS layout "
                                f"(config.yaml, gpt.pth, bigvgan_generator.pth, bpe.model)")
        info = cls(root, IndexTTSConfig.from_yaml(cfg_path))
        needed = [info.bpe_path] + ([info.gpt_path, info.bigvgan_path] if require_weights else [])
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise ModelDirError(f"{root} is missing {', '.join(missing)}; download the complete checkpoint "
                                f"(e.g. IndexTeam/IndexTTS-1.5) into this directory")
        return info


def resolve_model_dir(name: str | Path) -> Path:
    """A local directory as is; an `org/name` hub id through huggingface_hub (cached)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelDirError(f"{path} is a file; pass the checkpoint directory that contains config.yaml")
    text = str(name)
    if not _HUB_ID.match(text) or text.startswith((".", "/")):
        raise ModelDirError(f"model directory {text!r} does not exist (and is not a hub id like "
                            f"'IndexTeam/IndexTTS-1.5')")
    return _download_from_hub(text)


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError,
                                            OfflineModeIsEnabled, RepositoryNotFoundError)
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise ModelDirError(f"{repo_id!r} looks like a hub id but huggingface_hub is not installed") from e
    try:
        local = snapshot_download(repo_id, allow_patterns=list(HUB_ALLOW_PATTERNS))
    except RepositoryNotFoundError as e:
        raise ModelDirError(f"hub repository {repo_id!r} was not found (or needs a token)") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise ModelDirError(
            f"cannot download {repo_id!r}: the hub is unreachable (offline?) and no cached copy exists. "
            f"Download the checkpoint on a connected machine and pass its directory instead") from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelDirError(f"downloading {repo_id!r} failed: {e}. Pass a local checkpoint directory "
                            f"or retry when the hub is reachable") from e
    return Path(local)


def read_state_dict(path: Path, container_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict (memory-mapped, tensors only), unwrapping the first container key
    present (the official files nest it under `model` or `generator`)."""
    if not path.is_file():
        raise ModelDirError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt download?): "
                              f"{e}") from e
    if isinstance(obj, Mapping):
        for key in container_keys:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def compare_state_dict(expected: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]],
                       ignore: re.Pattern | None = None):
    """(missing, unexpected, mismatched) between our parameter shapes and a checkpoint's."""
    stored = {k: v for k, v in stored.items() if not (ignore and ignore.match(k))}
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    mismatched = [(k, tuple(stored[k]), tuple(expected[k]))
                  for k in expected if k in stored and tuple(stored[k]) != tuple(expected[k])]
    return missing, unexpected, mismatched


def describe_mismatch(name: str, missing, unexpected, mismatched, limit: int = 10) -> str:
    parts = [f"{name} does not match the model built from config.yaml:"]
    if missing:
        parts.append(f"  {len(missing)} missing key(s): {', '.join(missing[:limit])}"
                     + (" ..." if len(missing) > limit else ""))
    if unexpected:
        parts.append(f"  {len(unexpected)} unexpected key(s): {', '.join(unexpected[:limit])}"
                     + (" ..." if len(unexpected) > limit else ""))
    for k, got, want in mismatched[:limit]:
        parts.append(f"  shape mismatch for {k}: checkpoint {list(got)}, model {list(want)}")
    if len(mismatched) > limit:
        parts.append(f"  ... and {len(mismatched) - limit} more shape mismatches")
    parts.append("  Is config.yaml the one that belongs to these weights (1.0 vs 1.5)?")
    return "\n".join(parts)


def shapes(module_or_sd) -> dict[str, tuple[int, ...]]:
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else module_or_sd
    return {k: tuple(v.shape) for k, v in sd.items()}


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str,
                ignore: re.Pattern | None = None) -> None:
    """Copy `state_dict` into `module`, requiring an exact key and shape match."""
    missing, unexpected, mismatched = compare_state_dict(shapes(module), shapes(state_dict), ignore)
    if missing or unexpected or mismatched:
        raise CheckpointError(describe_mismatch(name, missing, unexpected, mismatched),
                              missing=missing, unexpected=unexpected, mismatched=mismatched)
    sd = {k: v for k, v in state_dict.items() if not (ignore and ignore.match(k))}
    module.load_state_dict(sd, strict=True, assign=False)


def build_gpt(cfg: IndexTTSConfig) -> nn.Module:
    from indextts.gpt.model import UnifiedVoice
    return UnifiedVoice(cfg.gpt)


def build_vocoder(cfg: IndexTTSConfig) -> nn.Module:
    from indextts.vocoder.bigvgan import BigVGAN
    return BigVGAN(cfg.bigvgan)


def _load(build, path: Path, containers: tuple[str, ...], device, dtype,
          keep: Optional[tuple[str, ...]] = None, ignore: re.Pattern | None = None) -> nn.Module:
    """Build on the meta device (no memory for random init), materialise on the CPU, load the
    state dict strictly (only the keys starting with `keep`, when given), then `post_load()`."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu")
    state = read_state_dict(path, containers)
    name = path.name
    if keep is not None:
        state = {k: v for k, v in state.items() if k.startswith(keep)}
        name = f"{name} ({', '.join(p.rstrip('.') for p in keep)})"
    load_strict(model, state, name, ignore)
    model.post_load()
    return model.to(device=device, dtype=dtype).eval()


def load_gpt(info: CheckpointInfo, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> nn.Module:
    """UnifiedVoice with `gpt.pth` loaded strictly, in eval mode on `device`."""
    return _load(lambda: build_gpt(info.config), info.gpt_path, ("model",), device, dtype,
                 ignore=GPT_IGNORED_KEYS)


def load_conditioner(info: CheckpointInfo, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> nn.Module:
    """Only the voice encoder of `gpt.pth` (conformer + perceiver), strictly: for engines that run
    the GPT itself elsewhere (vLLM) and must not hold a second copy of its weights."""
    from indextts.gpt.model import Conditioner
    return _load(lambda: Conditioner(info.config.gpt), info.gpt_path, ("model",), device, dtype,
                 keep=Conditioner.PREFIXES)


def load_vocoder(info: CheckpointInfo, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """BigVGAN with `bigvgan_generator.pth` loaded strictly and weight norm folded, in eval mode."""
    return _load(lambda: build_vocoder(info.config), info.bigvgan_path, ("generator",), device, dtype)


@dataclass
class CheckReport:
    """What `indextts check` found; `ok` only when the checkpoint would load."""

    model_dir: str
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_model_dir(model_dir: str | Path) -> CheckReport:
    """Validate a checkpoint directory against our model without allocating real weights."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        root = resolve_model_dir(model_dir)
    except ModelDirError as e:
        return CheckReport(str(model_dir), [str(e)], notes)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        return CheckReport(str(root), [f"missing file: config.yaml in {root}"], notes)
    try:
        cfg = IndexTTSConfig.from_yaml(cfg_path)
    except ConfigError as e:
        return CheckReport(str(root), [str(e)], notes)
    notes.append(f"config: IndexTTS {cfg.version}, GPT {cfg.gpt.layers} layers x {cfg.gpt.model_dim}, "
                 f"max {cfg.gpt.max_mel_tokens} codes / {cfg.gpt.max_text_tokens} text tokens")
    info = CheckpointInfo(root, cfg)
    if not info.bpe_path.is_file():
        problems.append(f"missing file: {info.bpe_path.name}")
    for path, build, containers, ignore in (
            (info.gpt_path, build_gpt, ("model",), GPT_IGNORED_KEYS),
            (info.bigvgan_path, build_vocoder, ("generator",), None)):
        if not path.is_file():
            problems.append(f"missing file: {path.name}")
            continue
        try:
            stored = shapes(read_state_dict(path, containers))
        except CheckpointError as e:
            problems.append(str(e))
            continue
        with torch.device("meta"):
            expected = shapes(build(cfg))
        missing, unexpected, mismatched = compare_state_dict(expected, stored, ignore)
        if missing or unexpected or mismatched:
            problems.append(describe_mismatch(path.name, missing, unexpected, mismatched, limit=50))
        else:
            notes.append(f"{path.name}: {len(stored)} tensors, all keys and shapes match")
    return CheckReport(str(root), problems, notes)
