"""One evaluation: generated clips against a reference set, with FD and KL, into a report.

- FD: every window's embedding of the generated clips against the reference set's Gaussian,
  which is cached (cache.py).
- KL: pairs by caption: each generated clip against the first reference clip whose caption is
  its prompt. Without pairs it is skipped, and the report says why.
- Synthetic adherence (adherence.py): style, lead and tempo, where the reference clips carry our
  synthetic corpus's attributes.

Each file is decoded once, in one pass over the reference set and one over the generated clips:
every model reads it while it is in memory, and a model that is both embedding and tagger runs
once (`embeddings_and_logits`). What is kept is per clip and small: windows' embeddings, one label
distribution, one CLAP vector, the adherence features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssmttm.audio import AudioError, audio_info, load_audio, resample, to_mono
from ssmttm.eval.adherence import ClipMeasures, SyntheticAdherence, is_synthetic
from ssmttm.eval.cache import StatsCache, content_hash
from ssmttm.eval.clap import ClapModelAudio, clap_similarity
from ssmttm.eval.clips import Clip, ClipsError
from ssmttm.eval.frechet import GaussianStats, fad_inf, frechet_distance
from ssmttm.eval.kl import kl_divergence, label_distribution, paired_kl
from ssmttm.eval.models import ClipModel
from ssmttm.provenance import code_version

log = logging.getLogger(__name__)


@dataclass
class Report:
    metrics: dict[str, float]
    settings: dict[str, Any]
    counts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    missing: list[str] = field(default_factory=list)  # reference clips named but absent
    per_clip: list[dict[str, Any]] = field(default_factory=list)
    code: dict[str, str | None] = field(default_factory=code_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "settings": self.settings,
            "clips": self.counts,
            "skipped": self.skipped,
            "missing": self.missing,
            "per_clip": self.per_clip,
            **self.code,
        }

    def markdown(self) -> str:
        rows = [f"| {name} | {value:.4f} |" for name, value in self.metrics.items()]
        rows += [f"| {name} | skipped: {why} |" for name, why in self.skipped.items()]
        counts = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        return "\n".join(["| metric | value |", "|---|---|", *rows, "", f"clips: {counts}"])


class _Audio:
    """One clip's file, decoded once, as mono at whichever rates the models ask for."""

    def __init__(self, clip: Clip) -> None:
        try:
            self.wav, self.rate = load_audio(clip.path)
        except AudioError as err:
            raise ClipsError(f"{clip.path}: {err}") from None
        self._mono = to_mono(self.wav)

    def mono(self, rate: int) -> np.ndarray:
        return resample(self._mono, self.rate, rate)[0]


@dataclass
class _Measured:
    """What one clip gave the models: window embeddings, its label distribution, its CLAP vector."""

    windows: np.ndarray | None = None  # (windows, dim)
    labels: np.ndarray | None = None  # (labels,)
    clap: np.ndarray | None = None  # (D,)


def evaluate(
    generated: Sequence[Clip],
    reference: Sequence[Clip],
    embedding: ClipModel,
    tagger: ClipModel | None = None,
    cache: StatsCache | None = None,
    per_clip: bool = False,
    progress: bool = False,
    clap: ClapModelAudio | None = None,
    fad_inf_steps: int = 0,
) -> Report:
    """FD of `embedding`; where clips pair up by caption, KL of `tagger` (default: the embedding's
    model); with `clap`, the CLAP score of each generated clip against its prompt; with
    `fad_inf_steps`, fadtk's FAD-inf from that many subset sizes of the generated windows; with
    `per_clip`, a row per generated clip of everything measured on it."""
    for what, clips in (("generated", generated), ("reference", reference)):
        if len(clips) < 2:
            raise ClipsError(f"a covariance needs at least 2 {what} clips, got {len(clips)}")
    for clip in [*generated, *reference]:  # every file readable before the first embedding, not midway
        try:
            audio_info(clip.path)
        except AudioError as err:
            raise ClipsError(f"{clip.path}: {err}") from None
    tagger = embedding if tagger is None else tagger
    cache = StatsCache() if cache is None else cache
    pairs = _pairs(generated, reference)
    paired_references = {r.path for _, r in pairs}
    measures = ClipMeasures() if all(is_synthetic(clip) for clip in reference) else None

    content = content_hash(c.path for c in reference)
    ref_stats = cache.load(embedding.id, content)
    log.info(
        "reference statistics %s (%s)",
        "computed" if ref_stats is None else "from the cache",
        cache.path(embedding.id, content),
    )
    ref_measured: dict[Path, _Measured] = {}
    for clip in _bar(reference, progress, "reference"):  # a file that several captions name counts once
        wants_labels = clip.path in paired_references
        if clip.path in ref_measured or not (ref_stats is None or wants_labels or measures is not None):
            continue
        audio = _Audio(clip)
        ref_measured[clip.path] = _measure(audio, embedding, tagger, ref_stats is None, wants_labels)
        if measures is not None:
            measures.features(clip, (audio.wav, audio.rate))
    if ref_stats is None:
        ref_stats = GaussianStats.of(np.concatenate([m.windows for m in ref_measured.values()]))
        cache.store(embedding.id, content, ref_stats)
    adherence = None if measures is None else SyntheticAdherence(reference, measures=measures)

    paired_generated = {id(g) for g, _ in pairs}
    gen_measured, rows = [], []
    for clip in _bar(generated, progress, "generated"):
        audio = _Audio(clip)
        measured = _measure(audio, embedding, tagger, True, id(clip) in paired_generated)
        if clap is not None:
            measured.clap = clap.clip_embedding(audio.mono(clap.sample_rate))
        gen_measured.append(measured)
        row: dict[str, Any] = {"generated": str(clip.path), "prompt": clip.caption}
        if adherence is not None:
            row |= adherence.clip_scores(clip, (audio.wav, audio.rate))
        rows.append(row)

    generated_windows = np.concatenate([m.windows for m in gen_measured])  # (windows, dim)
    metrics = {f"fd_{_short(embedding.id)}": frechet_distance(GaussianStats.of(generated_windows), ref_stats)}
    if fad_inf_steps:
        metrics[f"fd_inf_{_short(embedding.id)}"], _ = fad_inf(generated_windows, ref_stats, steps=fad_inf_steps)
    report = Report(
        metrics,
        {"embedding": embedding.id, "tagger": tagger.id},
        {"generated": len(generated), "reference": len(reference), "pairs": len(pairs)},
    )
    if clap is not None:
        metrics["clap_score"], similarity = clap_similarity(
            clap, [c.caption for c in generated], [m.clap for m in gen_measured]
        )
        report.settings["clap"] = clap.id
        for row, value in zip(rows, similarity, strict=True):
            row["clap"] = float(value)
    if adherence is not None:
        _add_adherence(report, adherence.summary(rows))
    kl_name = f"kl_{_short(tagger.id)}"
    if pairs:
        by_clip = {id(clip): m for clip, m in zip(generated, gen_measured, strict=True)}
        p = np.stack([by_clip[id(g)].labels for g, _ in pairs])  # (pairs, labels)
        q = np.stack([ref_measured[r.path].labels for _, r in pairs])
        kl = paired_kl(p, q)
        metrics[kl_name], metrics[f"{kl_name}_reverse"] = kl.kl, kl.reverse
        row_of = {id(clip): row for clip, row in zip(generated, rows, strict=True)}
        for (g, r), forward, reverse in zip(pairs, kl_divergence(p, q), kl_divergence(q, p), strict=True):
            row_of[id(g)] |= {"reference": str(r.path), "kl": float(forward), "kl_reverse": float(reverse)}
    else:
        report.skipped[kl_name] = "no generated prompt is the caption of a reference clip"
    if per_clip:
        report.per_clip = rows
    return report


def _measure(audio: _Audio, embedding: ClipModel, tagger: ClipModel, windows: bool, labels: bool) -> _Measured:
    """The embedding's windows and the tagger's label distribution of one clip, each if asked; one
    pass of a model that is both and can give both at once."""
    both = getattr(embedding, "embeddings_and_logits", None)
    if windows and labels and tagger is embedding and both is not None:
        emb, logits = both(audio.mono(embedding.sample_rate))
        return _Measured(emb, label_distribution(logits))
    out = _Measured()
    if windows:
        out.windows = embedding.embeddings(audio.mono(embedding.sample_rate))
    if labels:
        out.labels = label_distribution(tagger.logits(audio.mono(tagger.sample_rate)))
    return out


def _add_adherence(report: Report, scores: dict[str, float]) -> None:
    """The synthetic-adherence scores as metrics (counts as counts); a score with no clip to score
    is skipped, not written as NaN."""
    for name, value in scores.items():
        if name.endswith("_clips"):
            report.counts[f"adherence_{name}"] = int(value)
        elif math.isfinite(value):
            report.metrics[f"adherence_{name}"] = float(value)
        else:
            report.skipped[f"adherence_{name}"] = "no generated clip to score"


def _pairs(generated: Sequence[Clip], reference: Sequence[Clip]) -> list[tuple[Clip, Clip]]:
    by_caption: dict[str, Clip] = {}
    for clip in reference:
        by_caption.setdefault(clip.caption, clip)
    return [(g, by_caption[g.caption]) for g in generated if g.caption in by_caption]


def _short(model_id: str) -> str:
    """musicnn-MTT_musicnn-0.1.0 -> musicnn: the metric's name in reports."""
    return model_id.split("-")[0]


def _bar(items: Sequence, progress: bool, what: str):
    return tqdm(items, disable=not progress, desc=what, unit="clip")
