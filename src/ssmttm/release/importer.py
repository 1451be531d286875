"""Read an authors' checkpoint without running any of it, and write it in our exported format.

The file is opened with `torch.load(weights_only=True)`: tensors and plain containers only. A file
that needs anything more (a pickled function, a custom class) is refused before any of it runs.
A Lightning checkpoint keeps the model under `state_dict` (`music_model.*`, plus the frozen T5's
`text_encoder.*`, which we drop), the run's config under `hyper_parameters`, and training state
(`optimizer_states`, `lr_schedulers`, `loops`, ...) that we ignore. A bare state dict, `.pt` or
`.safetensors`, imports too.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ssmttm.config import SamplingConfig
from ssmttm.hub import first_line
from ssmttm.lm import MusicLM
from ssmttm.pretrained import save_pretrained
from ssmttm.release.layout import ReleaseError, build_lm, check_config, infer_shape
from ssmttm.text.t5 import FLAN_T5_BASE

MODEL_PREFIX = "music_model."
TEXT_ENCODER_PREFIX = "text_encoder."
DAC_44KHZ = "descript/dac_44khz"
# The release's sampling (pl_model.forward as its inference script calls it): CFG 3, temperature 1.2, top-k 250.
RELEASE_SAMPLING = SamplingConfig(cfg_scale=3.0, temperature=1.2, top_k=250)


@dataclass
class ReleaseCheckpoint:
    """The parts of a release checkpoint that the import uses."""

    state: dict[str, Tensor]  # release names, prefix removed, text encoder dropped
    prefix: str  # how the file spells the names: "music_model." in a Lightning checkpoint
    dropped: int  # text_encoder.* tensors left out
    model_config: dict[str, Any] | None  # the `model` section of the hyper-parameters, when present
    global_step: int | None


@dataclass
class ImportResult:
    out: Path
    lm: MusicLM
    dropped: int
    trained_steps: int | None


def read_checkpoint(path: str | Path) -> ReleaseCheckpoint:
    """The model tensors and what else the import uses, from a `.ckpt`, `.pt` or `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            content: Any = load_file(path)
        except (SafetensorError, OSError) as err:
            raise ReleaseError(f"{path} is not a readable safetensors file ({first_line(err)})") from None
    else:
        content = _load_tensors_only(path)
    if not isinstance(content, dict):
        raise ReleaseError(f"{path} holds a {type(content).__name__}, not a checkpoint dict or a state dict")
    state = content.get("state_dict", content)
    if not isinstance(state, dict) or not state:
        raise ReleaseError(f"{path}: its state_dict is empty or not a dict")
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ReleaseError(f"{path}: state_dict entries that are not tensors: {', '.join(not_tensors[:4])}")
    prefix = MODEL_PREFIX if any(key.startswith(MODEL_PREFIX) for key in state) else ""
    stray = [key for key in state if prefix and not key.startswith((MODEL_PREFIX, TEXT_ENCODER_PREFIX))]
    if stray:
        raise ReleaseError(f"{path}: tensors outside music_model.* and text_encoder.*: {', '.join(stray[:4])}")
    model = {k.removeprefix(prefix): v for k, v in state.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    step = content.get("global_step")
    return ReleaseCheckpoint(
        state=model,
        prefix=prefix,
        dropped=len(state) - len(model),
        model_config=_hyper_model(content.get("hyper_parameters")),
        global_step=step if isinstance(step, int) else None,
    )


def _load_tensors_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's reason is on its own line: "Unsupported global: GLOBAL module.name ..." when the
        # file asks for a function or class, other opcodes when it is not a pickle at all
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = found.group(1).strip() if found else first_line(err)
        wanted = re.search(r"GLOBAL ([\w.]+)", reason)
        if wanted:
            raise ReleaseError(
                f"{path} refused: it holds pickled code or objects beyond tensors ({wanted.group(1)}), and ssmttm "
                "never runs code from a checkpoint (it loads with torch.load(weights_only=True))"
            ) from None
        raise ReleaseError(f"{path} is not a readable PyTorch checkpoint ({reason[:160]}); nothing in it ran") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ReleaseError(f"{path} is not a readable PyTorch checkpoint ({first_line(err)})") from None


def _hyper_model(hyper: Any) -> dict[str, Any] | None:
    """The release config's `model` section as Lightning stored it: save_hyperparameters() in
    `__init__(self, config)` keeps {"config": {"model": ..., "training": ..., ...}}."""
    if not isinstance(hyper, dict):
        return None
    config = hyper.get("config", hyper)
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else None


def read_release_config(path: str | Path) -> dict[str, Any]:
    """The `model` section of the release's config.json."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleaseError(f"{path} is not valid JSON ({first_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ReleaseError(f"{path} has no `model` section: not the release's config.json")
    return data["model"]


def import_release(
    ckpt: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    text_encoder: str = FLAN_T5_BASE,
    codec: str = DAC_44KHZ,
) -> ImportResult:
    """Convert a release checkpoint (and optionally its config.json) into an exported model folder.

    The folder names `text_encoder` and `codec` (local folders are stored as absolute paths) and
    the release's text layout and sampling settings, so `TextToMusic.from_pretrained(out)` runs it
    as the authors' inference did.
    """
    checkpoint = read_checkpoint(ckpt)
    shape = infer_shape(checkpoint.state, checkpoint.prefix)
    if checkpoint.model_config is not None:
        check_config(shape, checkpoint.model_config, f"{ckpt} (its hyper_parameters)")
    model_config = checkpoint.model_config
    if config is not None:
        model_config = read_release_config(config)
        check_config(shape, model_config, str(config))
    lm = build_lm(checkpoint.state, model_config, checkpoint.prefix)
    path = save_pretrained(
        lm,
        out,
        codec=_absolute_if_local(codec),
        text_encoder=_absolute_if_local(text_encoder),
        generation=RELEASE_SAMPLING,
        trained_steps=checkpoint.global_step,
        source=str(Path(ckpt).resolve()),
        text_padding="release",
    )
    return ImportResult(path, lm, checkpoint.dropped, checkpoint.global_step)


def _absolute_if_local(name: str) -> str:
    """A folder as an absolute path, so the exported model loads from any working directory."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
