"""Text encoders by name: the short names users type, and `load_text_encoder`, which builds an
encoder from a short name, a hub id or a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ssmttm.hub import is_hub_id, is_local_path
from ssmttm.text.base import TextEncoder, TextEncoderError
from ssmttm.text.hf import check_available
from ssmttm.text.t5 import FLAN_T5_BASE
from ssmttm.text.tempo import SUFFIX as TEMPO_SUFFIX
from ssmttm.text.tempo import TempoConditioned

EMBEDDED = "minilm"  # ships as a Python package: works offline
PADDINGS = ("left", "release")  # output layouts: ours, and the authors' (text/release.py)

# Short names users type, and what they load.
NAMES = {
    "t5": FLAN_T5_BASE,
    "flan-t5-base": FLAN_T5_BASE,
    "minilm": EMBEDDED,
    "embedded": EMBEDDED,
    "default": EMBEDDED,
}


def load_text_encoder(
    name: str, device: str | torch.device = "cpu", max_length: int | None = None, padding: str = "left"
) -> TextEncoder:
    """A frozen text encoder by short name ("t5", "minilm"), hub id ("google/flan-t5-base") or local folder.

    `max_length` (tokens, special tokens included) defaults to the encoder's own limit. `padding`
    is the output layout: "left" (ours) or "release" (the authors' T5 path, text/release.py).
    Optional dependencies load lazily: only the encoder asked for is imported. A name ending in
    "+tempo" ("minilm+tempo") wraps that encoder in `TempoConditioned` (text/tempo.py).
    """
    if name.endswith(TEMPO_SUFFIX) and not Path(name).expanduser().exists():
        if padding != "left":
            raise TextEncoderError(f"tempo conditioning needs left padding, not {padding!r}")
        inner = load_text_encoder(name[: -len(TEMPO_SUFFIX)], device, max_length, padding)
        return TempoConditioned(inner)
    if padding not in PADDINGS:
        raise TextEncoderError(f"unknown text padding {padding!r}: use one of {', '.join(PADDINGS)}")
    source = NAMES.get(name, name)
    if padding == "release" and source == EMBEDDED:
        raise TextEncoderError(f"release padding is the authors' T5 text path; {name!r} is not a T5 encoder")
    if source == EMBEDDED:
        from ssmttm.text.minilm import MiniLMEncoder

        return MiniLMEncoder.from_package(device, max_length)
    path = Path(source).expanduser()
    if is_local_path(source):  # a folder: its config says which encoder
        kind = _model_type(source)
        source = str(path.resolve())  # the id, a cache key, must not depend on the working directory
    elif is_hub_id(source):  # only its name says which encoder it is
        kind = "t5" if "t5" in source.lower() else "bert" if "minilm" in source.lower() else None
        if kind is None:
            raise TextEncoderError(f"cannot tell whether hub id {name!r} is a T5 or a BERT encoder: pass its folder")
    else:
        known = ", ".join(sorted(NAMES))
        raise TextEncoderError(f"unknown text encoder {name!r}: use one of {known}, a hub id or a local model folder")
    if padding == "release":
        if kind != "t5":
            what = f"a {kind} encoder" if kind else "not a T5 encoder"
            raise TextEncoderError(f"release padding is the authors' T5 text path; {name!r} is {what}")
        from ssmttm.text.release import ReleaseT5Encoder

        return ReleaseT5Encoder.from_pretrained(source, device, max_length)
    if kind == "t5":
        from ssmttm.text.t5 import T5Encoder

        return T5Encoder.from_pretrained(source, device, max_length)
    if kind == "bert":
        from ssmttm.text.minilm import MiniLMEncoder

        return MiniLMEncoder.from_pretrained(source, device, max_length)
    raise TextEncoderError(f"{name!r} is not a text encoder we know how to load (model type {kind!r}): use T5 or BERT")


def _model_type(folder: str) -> str | None:
    check_available(folder)  # the string as given: Path("./x") would drop the "./" that makes it a path
    config = Path(folder).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError:
        raise TextEncoderError(f"{config} is not valid JSON") from None
