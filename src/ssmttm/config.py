"""Typed configs: dataclasses, YAML in and out, dotted overrides.

Every config is a plain dataclass. `from_dict` checks keys and types against the dataclass
annotations, so a typo in a YAML file or an override is an error that names the key, not a
silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ssmttm.files import write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, dict or override that does not match its dataclass."""


# What each sampling setting accepts, as a user reads it; `sampling_range_problem` checks them one by one.
SAMPLING_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "cfg_scale": (">= 0 (1 = no guidance)", lambda v: v >= 0),
    "temperature": (">= 0 (0 = greedy)", lambda v: v >= 0),
    "top_k": (">= 0 (0 = off)", lambda v: v >= 0),
    "top_p": ("in [0, 1] (0 = off)", lambda v: 0 <= v <= 1),
}


def sampling_range_problem(name: str, value: float) -> str | None:
    """Why `value` is out of range for the setting `name` ("must be >= 0 ..."), else None; NaN is out."""
    expected, ok = SAMPLING_RANGES[name]
    return None if ok(value) else f"must be {expected}"


@dataclass
class SamplingConfig:
    """How tokens are drawn from the LM's logits: MusicGen's defaults. An exported model saves its
    own (`ssmttm.pretrained`), which `TextToMusic` starts from; the generator, given none, uses these."""

    cfg_scale: float = 3.0  # classifier-free guidance; 1 means none: the unconditional branch is not run
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 250  # keep the k most likely tokens; 0 means off
    top_p: float = 0.0  # keep the smallest set of tokens whose probability reaches p; 0 means off

    def __post_init__(self) -> None:
        for name in SAMPLING_RANGES:
            value = getattr(self, name)
            problem = sampling_range_problem(name, value)
            if problem:  # the one bad field, not every field: the others may be fine defaults
                raise ConfigError(f"sampling {name} {value:g} is out of range: {problem}")


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


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: a mapping merges into the mapping it replaces, key by key;
    anything else replaces what was there. Neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
