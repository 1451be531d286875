"""Synthetic adherence: a tiny synthetic corpus scored against itself follows its captions (style,
lead, tempo), and the same audio under shuffled captions does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssmttm.data.synth import synthesize_corpus
from ssmttm.eval.adherence import SyntheticAdherence, synthetic_adherence
from ssmttm.eval.clips import Clip, ClipsError, reference_clips

# Seed 1's first 16 pieces have 7 styles and 10 leads; every caption states its BPM.
N, SEED, DURATION = 16, 1, 3.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[Clip]:
    folder = tmp_path_factory.mktemp("adherence_corpus")
    synthesize_corpus(folder, n=N, seed=SEED, sample_rate=22_050, duration_s=DURATION, bpm_captions=1.0)
    clips, missing = reference_clips(folder)
    assert len(clips) == N and not missing
    return clips


@pytest.fixture(scope="module")
def scorer(reference) -> SyntheticAdherence:
    return SyntheticAdherence(reference)


def _shuffled(clips: list[Clip]) -> list[Clip]:
    """The same audio, each under the caption of a clip of another style and lead."""
    rng = np.random.default_rng(0)
    combination = [(c.meta["style"], c.meta["lead"]) for c in clips]
    for _ in range(1000):
        order = rng.permutation(len(clips))
        if all(combination[i] != combination[j] for i, j in enumerate(order)):
            return [Clip(c.path, clips[j].caption) for c, j in zip(clips, order, strict=True)]
    raise AssertionError("no shuffle changes every combination")


def test_reference_clips_follow_their_own_captions(scorer, reference):
    metrics = scorer.score(reference)
    assert metrics["paired_clips"] == metrics["tempo_clips"] == metrics["reference_clips"] == N
    # Fitted on these very clips, so this is training accuracy: it says the features tell the
    # attributes apart and that pairing reads each prompt's attributes, nothing about a model.
    assert metrics["style_accuracy"] >= 0.9 and metrics["lead_accuracy"] >= 0.9
    # The beat tracker halves or doubles some slow styles (ambient, reggae), but not the median.
    assert metrics["tempo_error_bpm"] <= 8
    assert 0.5 <= metrics["tempo_within_8_bpm"] <= 1


def test_shuffled_captions_score_lower(scorer, reference):
    true, shuffled = scorer.score(reference), scorer.score(_shuffled(reference))
    assert shuffled["paired_clips"] == N
    assert shuffled["style_accuracy"] <= true["style_accuracy"] - 0.5
    assert shuffled["lead_accuracy"] <= true["lead_accuracy"] - 0.5
    assert shuffled["tempo_error_bpm"] >= 3 * true["tempo_error_bpm"]
    assert shuffled["tempo_within_8_bpm"] < true["tempo_within_8_bpm"]


def test_a_prompt_no_reference_caption_matches_counts_for_tempo_only(scorer, reference):
    metrics = scorer.score([Clip(reference[0].path, "a new piece at 120 BPM"), Clip(reference[1].path, "no tempo")])
    assert metrics["paired_clips"] == 0 and math.isnan(metrics["style_accuracy"])
    assert metrics["tempo_clips"] == 1 and not math.isnan(metrics["tempo_error_bpm"])


def test_a_reference_without_synthetic_metadata_is_refused(reference):
    plain = [Clip(c.path, c.caption) for c in reference]
    with pytest.raises(ClipsError, match="synthetic metadata"):
        synthetic_adherence(reference[:2], plain)
    one_style = [c for c in reference if c.meta["style"] == reference[0].meta["style"]]
    with pytest.raises(ClipsError, match="same style"):
        synthetic_adherence(one_style, one_style)
