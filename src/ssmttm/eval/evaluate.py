"""One evaluation: generated clips against a reference set, with FD and KL, into a report.

- FD: every window's embedding of the generated clips against the reference set's Gaussian,
  which is cached (cache.py).
- KL: pairs by caption: each generated clip against the first reference clip whose caption is
  its prompt. Without pairs it is skipped, and the report says why.
- Synthetic adherence (adherence.py): style, lead and tempo, where the reference clips carry our
  synthetic corpus's attributes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssmttm import __version__
from ssmttm.audio import AudioError, audio_info, load_audio, resample, to_mono
from ssmttm.eval.adherence import synthetic_adherence
from ssmttm.eval.cache import StatsCache, content_hash
from ssmttm.eval.clap import ClapModelAudio, clap_score
from ssmttm.eval.clips import Clip, ClipsError
from ssmttm.eval.frechet import GaussianStats, fad_inf, frechet_distance
from ssmttm.eval.kl import kl_divergence, label_distribution, paired_kl
from ssmttm.eval.models import ClipModel

log = logging.getLogger(__name__)


@dataclass
class Report:
    metrics: dict[str, float]
    settings: dict[str, Any]
    counts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    missing: list[str] = field(default_factory=list)  # reference clips named but absent
    per_clip: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "settings": self.settings,
            "clips": self.counts,
            "skipped": self.skipped,
            "missing": self.missing,
            "per_clip": self.per_clip,
            "ssmttm_version": __version__,
        }

    def markdown(self) -> str:
        rows = [f"| {name} | {value:.4f} |" for name, value in self.metrics.items()]
        rows += [f"| {name} | skipped: {why} |" for name, why in self.skipped.items()]
        counts = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        return "\n".join(["| metric | value |", "|---|---|", *rows, "", f"clips: {counts}"])


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
    `fad_inf_steps`, fadtk's FAD-inf from that many subset sizes of the generated windows."""
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
    generated_windows = _windows(embedding, generated, progress, "generated")  # (windows, dim)
    generated_stats = GaussianStats.of(generated_windows)

    def reference_stats() -> GaussianStats:
        return GaussianStats.of(_windows(embedding, reference, progress, "reference"))

    ref_stats, hit = cache.get(embedding.id, content_hash(c.path for c in reference), reference_stats)
    log.info("reference statistics %s (%s)", "from the cache" if hit else "computed", cache.path(embedding.id, ""))
    metrics = {f"fd_{_short(embedding.id)}": frechet_distance(generated_stats, ref_stats)}
    if fad_inf_steps:
        metrics[f"fd_inf_{_short(embedding.id)}"], _ = fad_inf(generated_windows, ref_stats, steps=fad_inf_steps)
    report = Report(
        metrics,
        {"embedding": embedding.id, "tagger": tagger.id},
        {"generated": len(generated), "reference": len(reference)},
    )
    if clap is not None:
        wavs = [_mono(clip, clap.sample_rate) for clip in _bar(generated, progress, "CLAP")]
        metrics["clap_score"], _ = clap_score(clap, [clip.caption for clip in generated], wavs)
        report.settings["clap"] = clap.id
    if all("style" in clip.meta and "lead" in clip.meta for clip in reference):  # our synthetic corpus
        _add_adherence(report, synthetic_adherence(generated, reference, progress=progress))
    pairs = _pairs(generated, reference)
    report.counts["pairs"] = len(pairs)
    if not pairs:
        report.skipped[f"kl_{_short(tagger.id)}"] = "no generated prompt is the caption of a reference clip"
        return report
    p = np.stack([_labels(tagger, g) for g, _ in _bar(pairs, progress, "pairs")])  # (pairs, labels)
    q = np.stack([_labels(tagger, r) for _, r in pairs])
    kl = paired_kl(p, q)
    metrics[f"kl_{_short(tagger.id)}"] = kl.kl
    metrics[f"kl_{_short(tagger.id)}_reverse"] = kl.reverse
    if per_clip:
        for (g, r), value in zip(pairs, kl_divergence(p, q), strict=True):
            report.per_clip.append(
                {"generated": str(g.path), "reference": str(r.path), "prompt": g.caption, "kl": float(value)}
            )
    return report


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


def _windows(model: ClipModel, clips: Sequence[Clip], progress: bool, what: str) -> np.ndarray:
    """Every window's embedding of every clip, (windows, dim)."""
    return np.concatenate([model.embeddings(_mono(clip, model.sample_rate)) for clip in _bar(clips, progress, what)])


def _labels(tagger: ClipModel, clip: Clip) -> np.ndarray:
    return label_distribution(tagger.logits(_mono(clip, tagger.sample_rate)))


def _pairs(generated: Sequence[Clip], reference: Sequence[Clip]) -> list[tuple[Clip, Clip]]:
    by_caption: dict[str, Clip] = {}
    for clip in reference:
        by_caption.setdefault(clip.caption, clip)
    return [(g, by_caption[g.caption]) for g in generated if g.caption in by_caption]


def _mono(clip: Clip, rate: int) -> np.ndarray:
    try:
        wav, sr = load_audio(clip.path)
    except AudioError as err:
        raise ClipsError(f"{clip.path}: {err}") from None
    return resample(to_mono(wav), sr, rate)[0]


def _short(model_id: str) -> str:
    """musicnn-MTT_musicnn-0.1.0 -> musicnn: the metric's name in reports."""
    return model_id.split("-")[0]


def _bar(items: Sequence, progress: bool, what: str):
    return tqdm(items, disable=not progress, desc=what, unit="clip")
