"""The exported model format, defined once: a folder holding `model.safetensors` and `config.json`.

    DIR/model.safetensors   the LM's state dict (tensors only, no pickle)
    DIR/config.json         {"format_version": 1, "model": {LMConfig}, "codec": ..., "text_encoder": ...,
                             "text_padding": "left" | "release",
                             "generation": {"cfg_scale", "temperature", "top_k", "top_p"},
                             "trained_steps", "source", "stage2"}
    DIR/stage2/             a two-stage model's stage 2 ("stage2": "stage2"; diffusion/pretrained.py)

The codec and the text encoder are frozen, so they are named (anything `load_codec` and
`load_text_encoder` accept), not stored. `ssmttm export` and the generation side's
`from_pretrained` / `save_pretrained` both go through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ssmttm.config import ConfigError, SamplingConfig, from_dict, to_dict
from ssmttm.files import read_text, write_json
from ssmttm.hub import first_line, how_to_provide, is_hub_id, offline
from ssmttm.lm import LMConfig, MusicLM
from ssmttm.weights import read_weights, state_dict_problems, write_weights

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "models"  # the models inside the package, by folder name


class PretrainedError(ValueError):
    """An exported model folder (or hub id) that is missing, incomplete or does not match its config."""


@dataclass
class PretrainedConfig:
    """Everything besides the weights that it takes to generate with an exported model."""

    model: LMConfig
    codec: str  # a name, hub id or folder that `load_codec` accepts
    text_encoder: str  # a name, hub id or folder that `load_text_encoder` accepts
    # The text encoder's output layout (ssmttm.text): "left" for our models; "release" for the
    # authors' imported checkpoints, which were trained on it. Absent in older files: "left".
    text_padding: Literal["left", "release"] = "left"
    generation: SamplingConfig = field(default_factory=SamplingConfig)  # what `generate` starts from
    format_version: int = FORMAT_VERSION
    trained_steps: int | None = None  # optimizer steps behind the weights, when known
    source: str = ""  # where the weights came from, e.g. the run folder or checkpoint
    # A two-stage model's stage 2: the folder (relative to this one) that renders this LM's codes;
    # "" for a single-stage model, whose codes the codec decodes.
    stage2: str = ""


def save_pretrained(
    model: MusicLM,
    directory: str | Path,
    *,
    codec: str,
    text_encoder: str,
    generation: SamplingConfig | None = None,
    trained_steps: int | None = None,
    source: str = "",
    text_padding: Literal["left", "release"] = "left",
    stage2: str = "",
    storage: str | None = None,
) -> Path:
    """Write `model` to `directory` (created if needed) as model.safetensors + config.json; returns the folder.
    `storage` ("bfloat16", "float32"; None: as the model holds them): the dtype of the weight
    matrices in the file (`weights.stored_as`); `load_pretrained` casts them to its own.

    Each file is written atomically. config.json goes last and is removed first, so a folder caught
    mid-export has no config and loads as an error, never as new weights under an old config.
    """
    directory = Path(directory)
    config = PretrainedConfig(
        model=model.cfg,
        codec=codec,
        text_encoder=text_encoder,
        text_padding=text_padding,
        generation=generation or SamplingConfig(),
        trained_steps=trained_steps,
        source=source,
        stage2=stage2,
    )
    (directory / CONFIG).unlink(missing_ok=True)
    write_weights(directory / WEIGHTS, model.state_dict(), storage)
    write_config(directory, config)
    return directory


def load_pretrained(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    linear_dtype: torch.dtype | None = None,
) -> tuple[MusicLM, PretrainedConfig]:
    """The model (in eval mode) and its config from a folder `save_pretrained` wrote, or a hub id "owner/name".

    dtype: of every floating-point tensor; None keeps the dtype the weights were saved in.
    linear_dtype: of the Linear layers' tensors instead (`ops.linear.cast_linear_weights`'s
    layout, for bf16 decoding). Each tensor is cast as it is read, so a reduced precision never
    holds the whole model in fp32 first. With HF_HUB_OFFLINE=1 a hub id that is not in the
    Hugging Face cache fails at once, saying how to bring the model here.
    """
    directory = resolve(source)
    _check_folder(directory)
    config = read_config(directory)
    # No random init: every tensor comes from the file. (A non-persistent buffer would stay on the
    # meta device; the round-trip tests of every backbone would catch one.)
    with torch.device("meta"):
        model = MusicLM(config.model)
    linear = {
        f"{name}.{key}" if name else key
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        for key, _ in module.named_parameters(recurse=False)
    }

    def cast(key: str, tensor: Tensor) -> Tensor:
        target = linear_dtype if linear_dtype is not None and key in linear else dtype
        return tensor.to(target) if target is not None and tensor.is_floating_point() else tensor

    state = read_weights(directory / WEIGHTS, cast, PretrainedError)
    _check_state(model.state_dict(), state, directory / WEIGHTS)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device).eval(), config


def load_weights(source: str | Path) -> dict[str, Tensor]:
    """The LM state dict an export holds (a folder or hub id), without building the model: what
    fine-tuning (`run.init_from`) starts from. A PretrainedError when it cannot be read."""
    directory = resolve(source)
    _check_folder(directory)
    return read_weights(directory / WEIGHTS, error=PretrainedError)


def write_config(directory: str | Path, config: PretrainedConfig) -> Path:
    """Write config.json atomically; returns its path."""
    path = Path(directory) / CONFIG
    write_json(path, to_dict(config))
    return path


def read_config(directory: str | Path) -> PretrainedConfig:
    """Read and check config.json of an exported model folder."""
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise PretrainedError(f"{directory} has no {CONFIG}: not a folder `ssmttm export` wrote")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise PretrainedError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise PretrainedError(
                f"{path}: format_version {version} is newer than this ssmttm reads ({FORMAT_VERSION}); upgrade ssmttm"
            )
        raise PretrainedError(f"{path}: format_version {version!r} is not one this ssmttm reads ({FORMAT_VERSION})")
    try:
        return from_dict(PretrainedConfig, data)
    except ConfigError as err:
        raise PretrainedError(f"{path}: {err}") from None
    except TypeError:  # a required key is absent: the dataclass names it
        missing = [key for key in ("model", "codec", "text_encoder") if key not in data]
        raise PretrainedError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}") from None


def shipped_models() -> list[str]:
    """The names of the models inside the package ("demo", ...), which `resolve` accepts as they are."""
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CONFIG).is_file()) if SHIPPED_DIR.is_dir() else []


def resolve(source: str | Path) -> Path:
    """The local folder of `source`: a folder as it is, a shipped model's name (a folder of the same
    name wins), or a hub id's snapshot (cached or downloaded)."""
    text = str(source)
    path = Path(text).expanduser()
    if not is_hub_id(text):
        if path.is_dir():
            return path
        if text in shipped_models():
            return SHIPPED_DIR / text
        raise PretrainedError(
            f"no model folder at {path}: pass a folder `ssmttm export` wrote, a hub id, or a shipped model "
            f"({', '.join(shipped_models()) or 'none in this install'})"
        )
    cached = _cached_snapshot(text)
    if cached is not None:
        return cached
    if offline():
        raise PretrainedError(
            f"cannot load model {text!r}: no local folder of that name, and it is not in the Hugging Face cache "
            f"(HF_HUB_OFFLINE=1); {how_to_provide(text)}"
        )
    from huggingface_hub import snapshot_download

    try:
        # a two-stage model's stage 2 too: its folder comes with the LM's
        return Path(snapshot_download(text, allow_patterns=[WEIGHTS, CONFIG, "stage2/*"]))
    except (OSError, ValueError) as err:
        raise PretrainedError(f"cannot download model {text!r} ({first_line(err)}); {how_to_provide(text)}") from None


def _cached_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot folder holding both files of `hub_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(hub_id, name) for name in (CONFIG, WEIGHTS)]
    if not all(isinstance(f, str) for f in found):
        return None
    folders = {Path(f).parent for f in found}
    return folders.pop() if len(folders) == 1 else None


def _check_folder(directory: Path) -> None:
    if not directory.is_dir():
        raise PretrainedError(f"no model folder at {directory}")
    missing = [name for name in (CONFIG, WEIGHTS) if not (directory / name).is_file()]
    if missing:
        files = " or ".join(missing)
        raise PretrainedError(f"{directory} has no {files}: not a complete export (`ssmttm export` writes both)")


def _check_state(expected: dict[str, Tensor], found: dict[str, Tensor], path: Path) -> None:
    """One line naming the first few missing, unexpected or mis-shaped tensors, if any."""
    problems = state_dict_problems(expected, found)
    if problems:
        raise PretrainedError(f"{path} does not match its config.json: {'; '.join(problems)}")
