"""The audio models metrics read, behind one interface: per-window embeddings (for FD) and per-window
label logits (for KL) of a mono clip at the model's rate.

`load_model(name)` builds one by name, importing only what it needs. The offline default is musicnn
(`musicnn.py`): MagnaTagATune's tagger, 3 s windows, 200-d penultimate embeddings, 50 tags.
"""

from __future__ import annotations

from importlib import metadata
from typing import Protocol

import numpy as np


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


MODELS = {"musicnn": lambda: MusicnnModel("MTT_musicnn"), "musicnn-msd": lambda: MusicnnModel("MSD_musicnn")}


def load_model(name: str) -> ClipModel:
    if name not in MODELS:
        raise ModelError(f"unknown embedding or tagger {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]()


def _long_enough(wav: np.ndarray, rate: int, seconds: float = 3.0) -> np.ndarray:
    """Clips shorter than one 3 s window, padded with silence to one: musicnn reads whole windows."""
    need = round(seconds * rate) + 1
    return wav if wav.shape[-1] >= need else np.pad(wav, (0, need - wav.shape[-1]))
