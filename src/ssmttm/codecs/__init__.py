"""Audio codecs behind one interface (`Codec`), built by name, hub id or local path."""

from __future__ import annotations

import json
from pathlib import Path

from ssmttm.codecs.base import Codec, CodecError

__all__ = ["Codec", "CodecError", "load_codec"]

# Short names users type, and what they load.
NAMES = {"dac": "descript/dac_44khz", "dac-44khz": "descript/dac_44khz"}


def load_codec(name: str, num_codebooks: int | None = None, device: str = "cpu") -> Codec:
    """A codec by short name ("dac"), hub id ("descript/dac_44khz") or local model folder.

    Optional dependencies load lazily: only the codec asked for is imported.
    """
    source = NAMES.get(name, name)
    path = Path(source)
    if path.exists():
        kind = _model_type(path)
    elif "/" in source and not source.startswith((".", "/")):
        kind = "dac" if "dac" in source.lower() else None
    else:
        known = ", ".join(sorted(NAMES))
        raise CodecError(f"unknown codec {name!r}: use one of {known}, a hub id or a local model folder")
    if kind == "dac":
        from ssmttm.codecs.dac import DacCodec

        return DacCodec.from_pretrained(source, num_codebooks, device)
    raise CodecError(f"{name!r} is not a codec we know how to load (model type {kind!r})")


def _model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        raise CodecError(f"{path} has no config.json: not a saved codec")
    try:
        return json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError:
        raise CodecError(f"{config} is not valid JSON") from None
