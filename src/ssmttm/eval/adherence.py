"""Synthetic adherence: do generated clips have the style, lead instrument and tempo their prompts
ask for? For reference sets of our synthetic corpus, whose clips carry those attributes as metadata.

- Features: a clip's frames in the embedded codec, dequantized to its 89 spectral features (what
  the LM reads), summarised per clip as each feature's mean, spread and mean frame-to-frame change.
- Style and lead: a logistic regression per attribute (standardised features, C 0.5), fitted on
  the reference clips, never on generated audio. A generated clip is scored against the reference
  clip whose caption is its prompt (the first one): the attributes that caption was written from.
- Tempo: librosa's beat tracker at the codec's rate against the BPM the prompt states
  (`ssmttm.text.stated_tempo`), for the prompts that state one, paired or not; the median
  absolute error in BPM and the share within 8 BPM.

These are the measures of `benchmarks/text_following.py`, which calls these functions. It scores
the codes a model generates; a clip here is an audio file, whose features come from encoding it
again, so the same clips can score a little differently here than in the benchmark's figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssmttm.audio import AudioError, load_audio, resample, to_mono
from ssmttm.codecs.quality import tempo_bpm
from ssmttm.codecs.spectral import SpectralCodec, load_embedded
from ssmttm.codecs.spectral.rvq import dequantize
from ssmttm.eval.clips import Clip, ClipsError
from ssmttm.text.stated_tempo import stated_bpm

log = logging.getLogger(__name__)

LABELS = ("style", "lead")  # the synthetic metadata's attributes that the classifiers judge
TEMPO_TOLERANCE_BPM = 8.0  # "within 8 BPM", as issue 7's tempo target counts
FIT_SHARE = 0.8  # the classifiers' check: fitted on the first 80% of the reference, scored on the rest


def clip_features(codec: SpectralCodec, codes: torch.Tensor) -> np.ndarray:
    """codes (K, T) -> (3 * 89,): per-feature mean, standard deviation and mean absolute change."""
    feats = dequantize(codes.T, codec.codebooks).numpy()  # (T, 89)
    change = np.abs(np.diff(feats, axis=0)).mean(axis=0) if len(feats) > 1 else np.zeros(feats.shape[1])
    return np.concatenate([feats.mean(axis=0), feats.std(axis=0), change])


def audio_codes(codec: SpectralCodec, wav: np.ndarray, rate: int) -> torch.Tensor:
    """wav (C, N) at `rate` -> its codec frames (K, T), from the channels' mean."""
    return codec.encode(torch.from_numpy(to_mono(wav))[None], rate)[0]


def codes_tempo(codec: SpectralCodec, codes: torch.Tensor) -> float:
    """codes (K, T) -> the tempo the beat tracker finds in their decoded audio."""
    return tempo_bpm(codec.decode(codes[None])[0, 0].numpy(), codec.sample_rate)


def audio_tempo(codec: SpectralCodec, wav: np.ndarray, rate: int) -> float:
    """wav (C, N) at `rate` -> the tempo the beat tracker finds in it at the codec's rate, the rate
    of the decoded audio `codes_tempo` reads."""
    return tempo_bpm(resample(to_mono(wav), rate, codec.sample_rate)[0], codec.sample_rate)


def fit_classifiers(features: np.ndarray, labels: dict[str, Sequence[str]]) -> tuple[dict[str, Any], dict[str, float]]:
    """features (N, F) and each attribute's N labels -> a fitted classifier per attribute, and its
    accuracy on the last 20% of the clips when fitted on the first 80% only (a sanity check; nan
    when those 20% are empty). The classifiers returned are fitted on all N."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("synthetic adherence needs scikit-learn (pip install scikit-learn)") from None
    split = int(FIT_SHARE * len(features))
    classifiers, check = {}, {}
    for name, values in labels.items():
        y = np.asarray(values)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
        check[name] = float("nan")
        if split < len(y) and len(set(y[:split])) > 1:
            clf.fit(features[:split], y[:split])
            check[name] = float((clf.predict(features[split:]) == y[split:]).mean())
        clf.fit(features, y)
        classifiers[name] = clf
    return classifiers, check


class ClipMeasures:
    """Each audio file's adherence features and tempo, measured once however many clips (or passes)
    ask. A caller that has decoded the file already passes its audio, so it is not read again."""

    def __init__(self, codec: SpectralCodec | None = None) -> None:
        self.codec = load_embedded() if codec is None else codec
        self._features: dict[Path, np.ndarray] = {}  # (3 * 89,) per audio file
        self._tempo: dict[Path, float] = {}

    def features(self, clip: Clip, audio: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        if clip.path not in self._features:
            wav, rate = _load(clip) if audio is None else audio
            self._features[clip.path] = clip_features(self.codec, audio_codes(self.codec, wav, rate))
        return self._features[clip.path]

    def tempo(self, clip: Clip, audio: tuple[np.ndarray, int] | None = None) -> float:
        if clip.path not in self._tempo:
            self._tempo[clip.path] = audio_tempo(self.codec, *(_load(clip) if audio is None else audio))
        return self._tempo[clip.path]


def is_synthetic(clip: Clip) -> bool:
    """Whether a clip carries the synthetic metadata the classifiers judge."""
    return all(isinstance(clip.meta.get(name), str) for name in LABELS)


class SyntheticAdherence:
    """Classifiers fitted on a synthetic reference set, then `score` of any generated clips."""

    def __init__(
        self,
        reference: Sequence[Clip],
        codec: SpectralCodec | None = None,
        progress: bool = False,
        measures: ClipMeasures | None = None,
    ):
        labelled = [c for c in reference if is_synthetic(c)]
        if len(labelled) < 2:
            raise ClipsError(
                f"synthetic adherence needs reference clips with synthetic metadata ({', '.join(LABELS)}); "
                f"{len(labelled)} of {len(reference)} have it"
            )
        for name in LABELS:
            if len({c.meta[name] for c in labelled}) < 2:
                raise ClipsError(f"every reference clip has the same {name}: nothing for a classifier to tell apart")
        self.measures = ClipMeasures(codec) if measures is None else measures
        self.codec = self.measures.codec
        self.progress = progress
        self._by_caption: dict[str, Clip] = {}
        for clip in labelled:
            self._by_caption.setdefault(clip.caption, clip)
        x = np.stack([self.measures.features(c) for c in tqdm(labelled, disable=not progress, desc="reference")])
        self.classifiers, self.check = fit_classifiers(x, {name: [c.meta[name] for c in labelled] for name in LABELS})
        self.reference_clips = len(labelled)
        log.info("adherence classifiers fitted on %d reference clips; held-out check %s", len(labelled), self.check)

    def paired(self, clip: Clip) -> Clip | None:
        """The reference clip whose caption is this clip's prompt: the attributes it is judged by."""
        return self._by_caption.get(clip.caption)

    def clip_scores(self, clip: Clip, audio: tuple[np.ndarray, int] | None = None) -> dict[str, Any]:
        """One clip's measures: each attribute predicted and the one its prompt asks for (where a
        reference caption pairs it), and its tempo against the prompt's BPM (where it states one).
        `audio`, the clip's (wav, rate) if the caller has decoded it already."""
        row: dict[str, Any] = {}
        paired = self.paired(clip)
        if paired is not None:
            x = self.measures.features(clip, audio)[None]
            for name in LABELS:
                row[f"{name}_predicted"] = str(self.classifiers[name].predict(x)[0])
                row[f"{name}_asked"] = paired.meta[name]
        stated = stated_bpm(clip.caption)
        if stated is not None:
            row["tempo_bpm"] = float(self.measures.tempo(clip, audio))
            row["stated_bpm"] = float(stated)
        return row

    def score(self, generated: Sequence[Clip]) -> dict[str, float]:
        """Style and lead accuracy over the clips whose prompt is a reference clip's caption, and the
        tempo's median absolute error (BPM) and share within 8 BPM over the prompts stating a BPM
        (nan without any), with the counts of clips each is over."""
        rows = [self.clip_scores(clip) for clip in tqdm(generated, disable=not self.progress, desc="generated")]
        return self.summary(rows)

    def summary(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """`clip_scores` rows -> the metrics `score` returns."""
        hits = {
            name: [r[f"{name}_predicted"] == r[f"{name}_asked"] for r in rows if f"{name}_asked" in r]
            for name in LABELS
        }
        errors = [abs(r["tempo_bpm"] - r["stated_bpm"]) for r in rows if "tempo_bpm" in r]
        metrics = {f"{name}_accuracy": _mean(hits[name]) for name in LABELS}
        metrics["tempo_error_bpm"] = float(np.median(errors)) if errors else float("nan")
        metrics["tempo_within_8_bpm"] = _mean([e <= TEMPO_TOLERANCE_BPM for e in errors])
        metrics |= {f"{name}_classifier_check": self.check[name] for name in LABELS}
        metrics |= {"paired_clips": float(len(hits[LABELS[0]])), "tempo_clips": float(len(errors))}
        metrics["reference_clips"] = float(self.reference_clips)
        return metrics


def synthetic_adherence(
    generated: Sequence[Clip], reference: Sequence[Clip], codec: SpectralCodec | None = None, progress: bool = False
) -> dict[str, float]:
    """`SyntheticAdherence(reference).score(generated)`: the metrics and their counts."""
    return SyntheticAdherence(reference, codec, progress).score(generated)


def _load(clip: Clip) -> tuple[np.ndarray, int]:
    try:
        return load_audio(clip.path)
    except AudioError as err:
        raise ClipsError(f"{clip.path}: {err}") from None


def _mean(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")
