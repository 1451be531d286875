"""The audio models metrics read, behind one interface: per-window embeddings (for FD) and per-window
label logits (for KL) of a mono clip at the model's rate.

`load_model(name)` builds one by name, importing only what it needs. The offline default is musicnn
(`musicnn.py`): MagnaTagATune's tagger, 3 s windows, 200-d penultimate embeddings, 50 tags. CLAP
(`clap.py`) and AST (`ast.py`) come from `transformers` checkpoints: "clap" and "ast" load their
defaults, "clap:SOURCE" and "ast:SOURCE" a local folder or a hub id. VGGish (`vggish.py`, for FAD_vgg)
reads torchvggish's weights from a file: "vggish:PATH"; plain "vggish" says where to get them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ssmttm.hub import cached_config, first_line, how_to_provide, is_hub_id, is_local_path, offline, quiet_loading


class ModelError(ValueError):
    """An evaluation model that cannot be had, with a one-line reason."""


class ClipModel(Protocol):
    id: str  # names the model and its weights' version: what a reference-statistics cache is keyed by
    sample_rate: int

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at `sample_rate` -> (windows, dim) float32."""
        ...

    def logits(self, wav: np.ndarray) -> np.ndarray:
        """Mono audio (N,) at `sample_rate` -> (windows, labels): the tagger's logits."""
        ...

    # Optional: `embeddings_and_logits(wav) -> (embeddings, logits)`, both from one pass, for a model
    # that is both the embedding and the tagger of an evaluation (musicnn's).


class MusicnnModel:
    """musicnn's MTT (default) or MSD tagger; `logits` are its pre-sigmoid tag scores."""

    def __init__(self, model: str = "MTT_musicnn") -> None:
        from ssmttm.eval.musicnn import MusicnnTagger

        self.tagger = MusicnnTagger.load(model)
        self.sample_rate = self.tagger.sample_rate
        self.labels = self.tagger.tags
        try:
            version = metadata.version("musicnn")
        except metadata.PackageNotFoundError:
            version = "unknown"
        self.id = f"musicnn-{model}-{version}"

    def embeddings(self, wav: np.ndarray) -> np.ndarray:
        return self.tagger.embeddings(_long_enough(wav, self.sample_rate))

    def logits(self, wav: np.ndarray) -> np.ndarray:
        return self.tagger(_long_enough(wav, self.sample_rate)).logits.cpu().numpy()

    def embeddings_and_logits(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both from one pass of the network: what `evaluate` asks of a model that is embedding and tagger."""
        out = self.tagger(_long_enough(wav, self.sample_rate))
        return out.penultimate.cpu().numpy(), out.logits.cpu().numpy()


def _clap(source: str | None = None) -> ClipModel:
    from ssmttm.eval.clap import ClapModelAudio

    return ClapModelAudio() if source is None else ClapModelAudio(source)


def _ast(source: str | None = None) -> ClipModel:
    from ssmttm.eval.ast import AstTagger

    return AstTagger() if source is None else AstTagger(source)


def _vggish(source: str | None = None) -> ClipModel:
    from ssmttm.eval.vggish import VggishModel

    return VggishModel(source)


MODELS: dict[str, Callable[[], ClipModel]] = {
    "musicnn": lambda: MusicnnModel("MTT_musicnn"),
    "musicnn-msd": lambda: MusicnnModel("MSD_musicnn"),
    "clap": _clap,
    "ast": _ast,
    "vggish": _vggish,  # without weights: the error line that says where to get them
}
# Models whose weights can be named, "NAME:SOURCE", and what their SOURCE is.
SOURCED: dict[str, Callable[[str], ClipModel]] = {"clap": _clap, "ast": _ast, "vggish": _vggish}
SOURCE_FORMS = {"clap": "DIR_OR_ID", "ast": "DIR_OR_ID", "vggish": "FILE"}


def load_model(name: str) -> ClipModel:
    """A model by name ("musicnn", "clap"), or "NAME:SOURCE" for one of `SOURCED` from a folder or hub id."""
    kind, sep, source = name.partition(":")
    if sep and kind in SOURCED:
        return SOURCED[kind](source)
    if name not in MODELS:
        raise ModelError(
            f"unknown embedding or tagger {name!r}; choose one of: {', '.join(MODELS)}"
            f" (or {', '.join(f'{k}:{SOURCE_FORMS[k]}' for k in SOURCED)})"
        )
    return MODELS[name]()


def resolve_source(source: str, what: str) -> str:
    """`source` as transformers should read it: a local folder saved with `save_pretrained`, or a hub id
    that can be had now. Anything else is one ModelError line, raised before transformers is imported,
    so an offline machine without the weights hears at once (not after retries) how to bring them."""
    if is_local_path(source):
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            state = "has no config.json" if path.is_dir() else "does not exist"
            raise ModelError(f"{what} folder {path} {state}: pass a folder saved with save_pretrained")
        return str(path)
    if not is_hub_id(source):
        raise ModelError(f"{what} {source!r} is neither a local folder nor a hub id (owner/name)")
    if offline() and cached_config(source) is None:
        raise ModelError(
            f"{what} {source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1; {how_to_provide(source)}"
        )
    return source


def from_pretrained(classes: tuple[Any, ...], source: str, what: str) -> list[Any]:
    """Each of `classes` loaded with `from_pretrained(source)`, or one ModelError line."""
    from safetensors import SafetensorError  # a weights file that is not one: transformers lets it through

    try:
        with quiet_loading():
            return [cls.from_pretrained(source) for cls in classes]
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelError(f"cannot load {what} from {source!r}: {first_line(err)}") from None


def source_name(source: str) -> str:
    """The part of a folder or hub id that names the weights in a model's id: "laion/larger_clap_music"
    -> "larger_clap_music", "runs/clap/" -> "clap"."""
    return Path(source.rstrip("/")).name


def windows(wav: np.ndarray, size: int) -> list[np.ndarray]:
    """(N,) -> consecutive windows of `size` samples, the last one ending where the clip ends (it
    overlaps its neighbour rather than holding padding); a clip shorter than one window is one
    window as it is, for the model's feature extractor to pad as the model was trained."""
    if wav.shape[-1] <= size:
        return [wav]
    starts = [*range(0, wav.shape[-1] - size, size), wav.shape[-1] - size]
    return [wav[start : start + size] for start in starts]


def _long_enough(wav: np.ndarray, rate: int, seconds: float = 3.0) -> np.ndarray:
    """Clips shorter than one 3 s window, padded with silence to one: musicnn reads whole windows."""
    need = round(seconds * rate) + 1
    return wav if wav.shape[-1] >= need else np.pad(wav, (0, need - wav.shape[-1]))
