"""Audio codecs behind one interface (`Codec`), built by name, hub id or local path."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import torch

from ssmttm.codecs.base import Codec, CodecError
from ssmttm.hub import cached_config, how_to_provide, is_hub_id, offline

__all__ = ["Codec", "CodecError", "codec_device", "load_codec"]

# Short names users type, and what they load.
NAMES = {
    "dac": "descript/dac_44khz",
    "dac-44khz": "descript/dac_44khz",
    "encodec": "facebook/encodec_32khz",
    "encodec-32khz": "facebook/encodec_32khz",
}
# A config's model_type -> the class that wraps it; imported only when asked for.
CLASSES = {"dac": "ssmttm.codecs.dac:DacCodec", "encodec": "ssmttm.codecs.encodec:EncodecCodec"}
# Codecs that need no download: name -> "module:factory", called as factory(num_codebooks, device).
# The embedded offline codec registers here as "embedded".
BUILTIN: dict[str, str] = {"embedded": "ssmttm.codecs.spectral.codec:load_embedded"}


def codec_device(name: str, device: str | torch.device) -> str:
    """The device the codec `name` runs on when the LM runs on `device`: the spectral codecs (the
    embedded one, and weights files `ssmttm codec fit` writes) analyse with librosa and synthesize in
    milliseconds on the CPU, so they stay there; neural codecs go where the LM goes."""
    spectral = name in BUILTIN or Path(name).suffix == ".safetensors"
    return "cpu" if spectral else str(device)


def load_codec(name: str, num_codebooks: int | None = None, device: str = "cpu") -> Codec:
    """A codec by short name ("embedded", "dac", "encodec"), hub id ("descript/dac_44khz"), local
    model folder, or a weights file of the embedded codec's kind (`ssmttm codec fit` writes one).

    Optional dependencies load lazily: only the codec asked for is imported. With HF_HUB_OFFLINE=1
    a model that is neither a local folder nor in the Hugging Face cache fails at once.
    """
    if name in BUILTIN:
        module, factory = BUILTIN[name].split(":")
        return getattr(import_module(module), factory)(num_codebooks, device)
    source = NAMES.get(name, name)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        from ssmttm.codecs.spectral import SpectralCodec

        if torch.device(device).type != "cpu":
            raise CodecError(f"spectral codecs run on the CPU only, not {device}")
        return SpectralCodec.load(path, num_codebooks)
    if path.exists():
        kind = _model_type(path / "config.json", path)
        source = str(path)
    elif is_hub_id(source):
        kind = _hub_model_type(source)
    else:
        known = ", ".join(sorted({*NAMES, *BUILTIN}))
        raise CodecError(
            f"unknown codec {name!r}: not a local folder, a hub id or one of {known}; {how_to_provide(NAMES['dac'])}"
        )
    if kind not in CLASSES:
        raise CodecError(f"{name!r} is not a codec we know how to load (model type {kind!r})")
    module, cls = CLASSES[kind].split(":")
    return getattr(import_module(module), cls).from_pretrained(source, num_codebooks, device)


def _hub_model_type(hub_id: str) -> str | None:
    """The model type of a hub id: from its cached config, else guessed from the name when online."""
    cached = cached_config(hub_id)
    if cached is not None:
        return _model_type(Path(cached), hub_id)
    if offline():
        raise CodecError(
            f"cannot load codec {hub_id!r}: no local folder of that name, and it is not in the Hugging Face "
            f"cache (HF_HUB_OFFLINE=1); {how_to_provide(hub_id)}"
        )
    return next((kind for kind in CLASSES if kind in hub_id.lower()), None)


def _model_type(config: Path, source: str | Path) -> str | None:
    if not config.is_file():
        raise CodecError(f"{source} has no config.json: not a saved codec")
    try:
        return json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError:
        raise CodecError(f"{config} is not valid JSON") from None
