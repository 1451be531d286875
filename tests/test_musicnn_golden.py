"""The PyTorch musicnn against the real tensorflow musicnn's outputs on three clips
(tests/golden/musicnn.safetensors, made by tests/golden/make_musicnn_golden.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ssmttm.eval.musicnn import MusicnnTagger, log_mel, patches

GOLDEN = Path(__file__).parent / "golden" / "musicnn.safetensors"
CLIPS = range(3)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return load_file(GOLDEN)


@pytest.mark.parametrize("clip", CLIPS)
def test_the_front_end_makes_tensorflows_input(golden, clip):
    ours = patches(log_mel(golden[f"audio_{clip}"]))
    np.testing.assert_allclose(ours, golden[f"patches_{clip}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", ["MTT_musicnn", "MSD_musicnn"])
@pytest.mark.parametrize("clip", CLIPS)
def test_the_network_matches_tensorflow_within_1e_4(golden, model, clip):
    tagger = MusicnnTagger.load(model)
    with torch.no_grad():
        out = tagger.net(torch.from_numpy(golden[f"patches_{clip}"]))
    np.testing.assert_allclose(torch.sigmoid(out.logits).numpy(), golden[f"{model}.taggram_{clip}"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.penultimate.numpy(), golden[f"{model}.penultimate_{clip}"], atol=1e-4, rtol=0)


def test_end_to_end_from_audio(golden):
    tagger = MusicnnTagger.load("MTT_musicnn")
    np.testing.assert_allclose(tagger.taggram(golden["audio_1"]), golden["MTT_musicnn.taggram_1"], atol=1e-4, rtol=0)
    assert np.isfinite(tagger.taggram(golden["audio_0"])).all()  # the loud chord that float16 turns to inf
