"""Checkpoint configuration: `config.yaml` parsed into frozen, typed dataclasses.

Only the keys that inference reads are kept; training keys (optimiser, discriminator, dataset
augmentation, ...) are ignored. Two named presets, `"1.0"` and `"1.5"`, describe the official
full-size checkpoints; `IndexTTSConfig.from_yaml` reads any checkpoint's own file.

The mel front end (n_fft 1024, hop 256, 100 HTK bands) is fixed in `indextts.audio` because the
original ignores the config's `dataset.mel` section; it is therefore not part of this config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from indextts.errors import ConfigError

DEFAULT_SPEAKER_ENCODER_CHANNELS = (512, 512, 512, 512, 1536)


@dataclass(frozen=True)
class ConditioningConfig:
    """Conformer encoder + Perceiver resampler that turn a reference mel into 32 latents."""

    output_size: int = 512          # conformer width (the perceiver's context width)
    linear_units: int = 2048        # conformer feed-forward width
    attention_heads: int = 8        # conformer heads; also the perceiver's head count
    num_blocks: int = 6
    input_layer: str = "conv2d2"    # conv2d subsampling by 2 in time
    perceiver_mult: int = 2         # perceiver feed-forward multiplier
    num_latents: int = 32


@dataclass(frozen=True)
class GPTConfig:
    """UnifiedVoice: a GPT-2 decoder over [conditioning, text, mel codes]."""

    model_dim: int = 1280
    layers: int = 24
    heads: int = 20
    max_mel_tokens: int = 800
    max_text_tokens: int = 600
    number_text_tokens: int = 12000
    number_mel_codes: int = 8194
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    start_text_token: int = 0
    stop_text_token: int = 1
    activation_function: str = "gelu_new"
    condition_type: str = "conformer_perceiver"
    condition: ConditioningConfig = field(default_factory=ConditioningConfig)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    @property
    def text_vocab_size(self) -> int:
        """Rows of `text_embedding` / `text_head` (the original adds one spare row)."""
        return self.number_text_tokens + 1

    @property
    def text_positions(self) -> int:
        """Rows of `text_pos_embedding`: room for start + text + stop."""
        return self.max_text_tokens + 2

    @property
    def max_segment_tokens(self) -> int:
        """The most text tokens to ask the segmenter for: one below `max_text_tokens`, because the
        original's segmenter (reproduced as is) may append a closing quote to a sentence that
        already has the maximum, which would overflow the position table mid-request."""
        return self.max_text_tokens - 1

    @property
    def mel_positions(self) -> int:
        """Rows of `mel_pos_embedding`: start + codes + stop, plus the original's spare row."""
        return self.max_mel_tokens + 3

    @property
    def max_generated_codes(self) -> int:
        """Most codes one generation may produce (stop included): the original's `max_mel_tokens`.
        Generated code k sits at mel position k + 2, so the table (`mel_positions` rows) would
        hold one more; the latent pass is checked against that table bound."""
        return self.max_mel_tokens


@dataclass(frozen=True)
class BigVGANConfig:
    """BigVGAN generator with an ECAPA-TDNN speaker encoder, as IndexTTS ships it."""

    gpt_dim: int = 1280
    num_mels: int = 100
    sampling_rate: int = 24000
    upsample_rates: tuple[int, ...] = (4, 4, 4, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    speaker_embedding_dim: int = 512
    cond_d_vector_in_each_upsampling_layer: bool = True
    feat_upsample: bool = False
    speaker_encoder_channels: tuple[int, ...] = DEFAULT_SPEAKER_ENCODER_CHANNELS

    @property
    def hop_length(self) -> int:
        """Output samples per latent frame (1024 for the official rates)."""
        n = 1
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass(frozen=True)
class IndexTTSConfig:
    """Everything inference needs from a checkpoint's `config.yaml`."""

    gpt: GPTConfig
    bigvgan: BigVGANConfig
    version: str = "1.0"
    sample_rate: int = 24000
    bpe_model: str = "bpe.model"
    gpt_checkpoint: str = "gpt.pth"
    bigvgan_checkpoint: str = "bigvgan_generator.pth"

    @classmethod
    def preset(cls, name: str) -> "IndexTTSConfig":
        """The official full-size configuration of IndexTTS `name` ("1.0" or "1.5")."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "IndexTTSConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> "IndexTTSConfig":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
        reader = _Reader(source)
        gpt = _read_gpt(reader, raw)
        bigvgan = _read_bigvgan(reader, raw, gpt)
        dataset = raw.get("dataset") or {}
        if not isinstance(dataset, Mapping):
            raise ConfigError(f"{source}: 'dataset' must be a mapping")
        return cls(
            gpt=gpt,
            bigvgan=bigvgan,
            version=str(raw.get("version", "1.0")),
            sample_rate=reader.int(dataset, "sample_rate", "dataset", default=24000),
            bpe_model=reader.str(dataset, "bpe_model", "dataset", default="bpe.model"),
            gpt_checkpoint=reader.str(raw, "gpt_checkpoint", "", default="gpt.pth"),
            bigvgan_checkpoint=reader.str(raw, "bigvgan_checkpoint", "", default="bigvgan_generator.pth"),
        )


_MISSING = object()


def _as_int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where} must be a list of integers, got {value!r}")
    return tuple(value)


def _read_conditioning(reader: "_Reader", gpt_raw: Mapping) -> ConditioningConfig:
    """`gpt.condition_module`: the conformer + perceiver that make the conditioning latents."""
    cond_raw = reader.section(gpt_raw, "condition_module", prefix="gpt")
    c = "gpt.condition_module"
    return ConditioningConfig(
        output_size=reader.int(cond_raw, "output_size", c),
        linear_units=reader.int(cond_raw, "linear_units", c),
        attention_heads=reader.int(cond_raw, "attention_heads", c),
        num_blocks=reader.int(cond_raw, "num_blocks", c),
        input_layer=reader.str(cond_raw, "input_layer", c, default="conv2d2"),
        perceiver_mult=reader.int(cond_raw, "perceiver_mult", c, default=2),
    )


def _read_gpt(reader: "_Reader", raw: Mapping) -> GPTConfig:
    """The `gpt` section, checked for what inference supports."""
    gpt_raw = reader.section(raw, "gpt")
    cond = _read_conditioning(reader, gpt_raw)
    g = "gpt"
    gpt = GPTConfig(
        model_dim=reader.int(gpt_raw, "model_dim", g),
        layers=reader.int(gpt_raw, "layers", g),
        heads=reader.int(gpt_raw, "heads", g),
        max_mel_tokens=reader.int(gpt_raw, "max_mel_tokens", g),
        max_text_tokens=reader.int(gpt_raw, "max_text_tokens", g),
        number_text_tokens=reader.int(gpt_raw, "number_text_tokens", g),
        number_mel_codes=reader.int(gpt_raw, "number_mel_codes", g, default=8194),
        start_mel_token=reader.int(gpt_raw, "start_mel_token", g, default=8192),
        stop_mel_token=reader.int(gpt_raw, "stop_mel_token", g, default=8193),
        start_text_token=reader.int(gpt_raw, "start_text_token", g, default=0),
        stop_text_token=reader.int(gpt_raw, "stop_text_token", g, default=1),
        activation_function=reader.str(gpt_raw, "activation_function", g, default="gelu_new"),
        condition_type=reader.str(gpt_raw, "condition_type", g, default="conformer_perceiver"),
        condition=cond,
    )
    source = reader.source
    if gpt.condition_type != "conformer_perceiver":
        raise ConfigError(f"{source}: gpt.condition_type {gpt.condition_type!r} is not supported "
                          "(IndexTTS 1.0/1.5 use 'conformer_perceiver')")
    if gpt.model_dim % gpt.heads:
        raise ConfigError(f"{source}: gpt.model_dim ({gpt.model_dim}) must be divisible by gpt.heads ({gpt.heads})")
    return gpt


def _read_bigvgan(reader: "_Reader", raw: Mapping, gpt: GPTConfig) -> BigVGANConfig:
    """The `bigvgan` section, checked for what inference supports and against the GPT's width."""
    b_raw = reader.section(raw, "bigvgan")
    b = "bigvgan"
    source = reader.source
    channels = reader.int_list(b_raw, "speaker_encoder_channels", b,
                               default=DEFAULT_SPEAKER_ENCODER_CHANNELS)
    if len(channels) != 5:
        raise ConfigError(f"{source}: bigvgan.speaker_encoder_channels must list 5 widths, got {list(channels)}")
    bigvgan = BigVGANConfig(
        gpt_dim=reader.int(b_raw, "gpt_dim", b),
        num_mels=reader.int(b_raw, "num_mels", b, default=100),
        sampling_rate=reader.int(b_raw, "sampling_rate", b, default=24000),
        upsample_rates=reader.int_list(b_raw, "upsample_rates", b),
        upsample_kernel_sizes=reader.int_list(b_raw, "upsample_kernel_sizes", b),
        upsample_initial_channel=reader.int(b_raw, "upsample_initial_channel", b),
        resblock=str(reader.value(b_raw, "resblock", b, default="1")),
        resblock_kernel_sizes=reader.int_list(b_raw, "resblock_kernel_sizes", b),
        resblock_dilation_sizes=tuple(
            tuple(_as_int_list(d, f"{source}: bigvgan.resblock_dilation_sizes"))
            for d in reader.list(b_raw, "resblock_dilation_sizes", b)),
        activation=reader.str(b_raw, "activation", b, default="snakebeta"),
        snake_logscale=bool(reader.value(b_raw, "snake_logscale", b, default=True)),
        speaker_embedding_dim=reader.int(b_raw, "speaker_embedding_dim", b),
        cond_d_vector_in_each_upsampling_layer=bool(
            reader.value(b_raw, "cond_d_vector_in_each_upsampling_layer", b, default=True)),
        feat_upsample=bool(reader.value(b_raw, "feat_upsample", b, default=False)),
        speaker_encoder_channels=channels,
    )
    if len(bigvgan.upsample_rates) != len(bigvgan.upsample_kernel_sizes):
        raise ConfigError(f"{source}: bigvgan.upsample_rates and upsample_kernel_sizes differ in length")
    if len(bigvgan.resblock_kernel_sizes) != len(bigvgan.resblock_dilation_sizes):
        raise ConfigError(f"{source}: bigvgan.resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    if bigvgan.resblock != "1" or bigvgan.activation != "snakebeta" or bigvgan.feat_upsample:
        raise ConfigError(f"{source}: only resblock '1', activation 'snakebeta' and feat_upsample false are "
                          "supported (as in IndexTTS 1.0/1.5)")
    if bigvgan.gpt_dim != gpt.model_dim:
        raise ConfigError(f"{source}: bigvgan.gpt_dim ({bigvgan.gpt_dim}) must equal gpt.model_dim ({gpt.model_dim})")
    return bigvgan


class _Reader:
    """Typed access to a parsed YAML mapping, with errors that name the key path."""

    def __init__(self, source: str):
        self.source = source

    def value(self, raw: Mapping, key: str, prefix: str, default: Any = _MISSING) -> Any:
        path = f"{prefix}.{key}" if prefix else key
        if key not in raw or raw[key] is None:
            if default is _MISSING:
                raise ConfigError(f"{self.source}: required key '{path}' is missing")
            return default
        return raw[key]

    def section(self, raw: Mapping, key: str, prefix: str = "") -> Mapping:
        v = self.value(raw, key, prefix)
        if not isinstance(v, Mapping):
            raise ConfigError(f"{self.source}: '{prefix + '.' if prefix else ''}{key}' must be a mapping")
        return v

    def int(self, raw: Mapping, key: str, prefix: str, default: Any = _MISSING) -> int:
        v = self.value(raw, key, prefix, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.source}: '{prefix}.{key}' must be an integer, got {v!r}")
        if v < 0:
            raise ConfigError(f"{self.source}: '{prefix}.{key}' must not be negative, got {v}")
        return v

    def str(self, raw: Mapping, key: str, prefix: str, default: Any = _MISSING) -> str:
        v = self.value(raw, key, prefix, default)
        if not isinstance(v, str):
            raise ConfigError(f"{self.source}: '{prefix}.{key}' must be a string, got {v!r}")
        return v

    def list(self, raw: Mapping, key: str, prefix: str, default: Any = _MISSING) -> list:
        v = self.value(raw, key, prefix, default)
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{self.source}: '{prefix}.{key}' must be a list, got {v!r}")
        return list(v)

    def int_list(self, raw: Mapping, key: str, prefix: str, default: Any = _MISSING) -> tuple[int, ...]:
        return _as_int_list(self.list(raw, key, prefix, default), f"{self.source}: '{prefix}.{key}'")


def _preset(version: str, layers: int, model_dim: int, heads: int,
            max_mel_tokens: int, max_text_tokens: int, activation: str) -> IndexTTSConfig:
    return IndexTTSConfig(
        gpt=GPTConfig(model_dim=model_dim, layers=layers, heads=heads, max_mel_tokens=max_mel_tokens,
                      max_text_tokens=max_text_tokens, activation_function=activation),
        bigvgan=BigVGANConfig(gpt_dim=model_dim),
        version=version,
    )


PRESETS: dict[str, IndexTTSConfig] = {
    "1.0": _preset("1.0", 20, 1024, 16, 605, 402, "gelu_pytorch_tanh"),
    "1.5": _preset("1.5", 24, 1280, 20, 800, 600, "gelu_pytorch_tanh"),
}


