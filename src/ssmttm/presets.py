"""The shipped model presets (configs/*.yaml): LM configs by name, or any YAML file of one."""

from __future__ import annotations

from pathlib import Path

from ssmttm.config import ConfigError, load_yaml
from ssmttm.lm import LMConfig

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
