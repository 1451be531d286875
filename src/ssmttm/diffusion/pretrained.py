"""Stage 2's exported format: a folder of `model.safetensors` and `config.json`, as the LM's.

    DIR/model.safetensors   Stage2Model's state dict: the denoiser and the latent statistics
    DIR/config.json         {"format_version": 1, "kind": "stage2", "model": {Stage2Config},
                             "codec": ..., "text_encoder": ..., "trained_steps", "source"}

A two-stage model is an LM export (stage 1, K=1) with such a folder inside it as `stage2/`; a
stage 2 on its own is any folder in this format, which `--stage2 PATH` pairs with a stage 1. The
codec and text encoder are named, as the LM's are: a stage 2 renders for one codec and reads one
text encoder's embeddings, and loading checks that stage 1 names the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ssmttm.config import ConfigError, from_dict, to_dict
from ssmttm.diffusion.config import Stage2Config
from ssmttm.diffusion.model import Stage2Model
from ssmttm.files import read_text, write_json
from ssmttm.weights import read_weights, state_dict_problems, write_weights

WEIGHTS, CONFIG = "model.safetensors", "config.json"
STAGE2_FOLDER = "stage2"  # inside a two-stage model's folder
FORMAT_VERSION = 1


class Stage2Error(ValueError):
    """A stage-2 folder that is missing, incomplete or does not match its config; one line."""


@dataclass
class Stage2Pretrained:
    model: Stage2Config
    codec: str  # what `load_codec` accepts: the codec whose latents it generates
    text_encoder: str  # what `load_text_encoder` accepts: the embeddings it cross-attends to
    kind: Literal["stage2"] = "stage2"
    format_version: int = FORMAT_VERSION
    trained_steps: int | None = None
    source: str = ""


def save_stage2(
    model: Stage2Model,
    directory: str | Path,
    *,
    codec: str,
    text_encoder: str,
    trained_steps: int | None = None,
    source: str = "",
    storage: str | None = None,
) -> Path:
    """Write `model` to `directory` (created if needed); config.json goes last and is removed first,
    so a folder caught mid-export loads as an error, never as new weights under an old config.
    `storage`: the dtype of the weight matrices in the file (`weights.stored_as`; None: as held)."""
    directory = Path(directory)
    config = Stage2Pretrained(model.cfg, codec, text_encoder, trained_steps=trained_steps, source=source)
    (directory / CONFIG).unlink(missing_ok=True)
    write_weights(directory / WEIGHTS, model.state_dict(), storage)
    write_json(directory / CONFIG, to_dict(config))
    return directory


def read_stage2_config(directory: str | Path) -> Stage2Pretrained:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise Stage2Error(f"{directory} has no {CONFIG}: not a stage-2 folder `ssmttm export` wrote")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise Stage2Error(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != "stage2":
        raise Stage2Error(f'{path} is not a stage-2 config (no "kind": "stage2")')
    if data.get("format_version") != FORMAT_VERSION:
        raise Stage2Error(f"{path}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}")
    try:
        return from_dict(Stage2Pretrained, data)
    except ConfigError as err:
        raise Stage2Error(f"{path}: {err}") from None
    except TypeError:  # a required key is absent
        missing = [key for key in ("model", "codec", "text_encoder") if key not in data]
        raise Stage2Error(f"{path}: missing {', '.join(missing)}") from None


def load_stage2(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Stage2Model, Stage2Pretrained]:
    """The stage-2 model (eval mode) and its config from a folder `save_stage2` wrote."""
    directory = Path(directory)
    if not directory.is_dir():
        raise Stage2Error(f"no stage-2 folder at {directory}")
    config = read_stage2_config(directory)
    if not (directory / WEIGHTS).is_file():
        raise Stage2Error(f"{directory} has no {WEIGHTS}: not a complete stage-2 export")
    with torch.device("meta"):
        model = Stage2Model(config.model)
    # In float32 whatever the file holds: a shipped model may be stored in bf16 to halve its size.
    state = read_weights(directory / WEIGHTS, lambda _, t: t.float() if t.is_floating_point() else t, Stage2Error)
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise Stage2Error(f"{directory / WEIGHTS} does not match its config.json: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval(), config
