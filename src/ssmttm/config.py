"""Typed model configs: dataclasses, YAML in and out, dotted overrides.

Every config is a plain dataclass. `from_dict` checks keys and types against the dataclass
annotations, so a typo in a YAML file or an override is an error that names the key, not a
silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, dict or override that does not match its dataclass."""


@dataclass
class Mamba2Config:
    """The Mamba-2 mixer; defaults are mamba_ssm's `Mamba2` defaults."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    # Chunk length of the SSD scan: longer chunks do more (dense) intra-chunk work and less
    # inter-chunk bookkeeping; 64 is a good CPU trade-off at d_state 512 (benchmarks/).
    chunk_size: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    a_init_min: float = 1.0
    a_init_max: float = 16.0


@dataclass
class MambaConfig:
    """The Mamba-1 selective-scan mixer; defaults are mamba_ssm's `Mamba` defaults."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means mamba_ssm's "auto": ceil(d_model / 16)
    chunk_size: int = 32
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4


@dataclass
class BackboneConfig:
    """A stack of residual blocks: mixer (SSM or attention), optional cross-attention, optional MLP."""

    kind: Literal["simba", "mamba2", "mamba", "transformer"] = "simba"
    d_model: int = 256
    n_layers: int = 4
    mlp_hidden: int = 0  # width of the MLP channel mixer; 0 means no MLP (plain Mamba / Mamba-2)
    dropout: float = 0.0
    final_norm: bool = True  # the release's SiMBA has none
    norm_eps: float = 1e-5
    num_heads: int = 8  # self-attention (transformer) and cross-attention heads
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    mamba: MambaConfig = field(default_factory=MambaConfig)


@dataclass
class LMConfig:
    """The music language model: codebook streams, text conditioning, positions, loss."""

    num_codebooks: int = 4
    cardinality: int = 1024  # codebook size; the special (pad/start) id equals it
    text_dim: int = 768  # width of the text encoder's embeddings
    pattern: Literal["delay", "parallel"] = "delay"
    conditioning: Literal["prefix", "cross"] = "prefix"
    # "none": the recurrence carries order (SSM default). "sinusoidal": the release's absolute
    # embedding over [text; audio]. "rope": rotary, inside self-attention (transformer default).
    positions: Literal["none", "sinusoidal", "rope"] = "none"
    # "apply": masked text positions are absent. "ignore": the release's behaviour (docs/release.md).
    text_mask: Literal["apply", "ignore"] = "apply"
    label_smoothing: float = 0.1
    caption_dropout: float = 0.1  # classifier-free guidance: drop the whole caption
    token_dropout: float = 0.1  # and single text tokens
    # A metronome input (beat_clock.py): every frame gets its place in the beat of the tempo the
    # caption states. Off in the release's layout and in models trained before it existed.
    beat_clock: bool = False
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def __post_init__(self) -> None:
        if self.positions == "rope" and self.backbone.kind != "transformer":
            raise ConfigError("positions: rope needs self-attention; use it with backbone.kind transformer")
        if self.num_codebooks < 1 or self.cardinality < 1:
            raise ConfigError("num_codebooks and cardinality must be positive")

    @property
    def vocab_size(self) -> int:
        return self.cardinality + 1

    @property
    def special_token(self) -> int:
        return self.cardinality


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''}{where}: {', '.join(unknown)}")
    kwargs = {key: _coerce(hints[key], value, f"{path}.{key}" if path else key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path + ': ' if path else ''}{err}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} does not match {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = data
        parts = key.lstrip("-").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or another top level is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    return from_dict(cls, apply_overrides(read_yaml(path), overrides or []))


def save_yaml(config: Any, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written config."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)


PRESET_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, overrides: list[str] | None = None) -> LMConfig:
    """A preset by name (`simba-300m`) or a path to a YAML file."""
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_yaml(LMConfig, path, overrides)
