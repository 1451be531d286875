"""VGGish behind the `ClipModel` interface, on a randomly initialised state dict saved to a file: shapes,
VGGish's front end, and one fast error line for the plain name or a missing file, never a download."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ssmttm.eval.models import ModelError, load_model

pytest.importorskip("torchvggish")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """torch.hub fetching anything (torchvggish's weights come from GitHub) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.hub download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from torchvggish.torchvggish import _vgg

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(_vgg(postprocess=False).state_dict(), path)
    return path


def test_vggish_embeds_each_0_96_s_example(weights):
    model = load_model(f"vggish:{weights}")
    assert model.sample_rate == 16000 and model.id.startswith("vggish-")
    t = np.arange(3 * 16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    emb = model.embeddings(wav)
    assert emb.shape == (3, 128) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert (emb < 0).any()  # the last ReLU is gone: FAD's embedding is the linear layer's output
    assert model.embeddings(wav[:4000]).shape == (1, 128)  # a short clip is padded to one example
    with pytest.raises(ModelError, match="not a tagger"):
        model.logits(wav)


def test_vggish_front_end_is_torchvggish_s(weights):
    from torchvggish.vggish_input import waveform_to_examples

    model = load_model(f"vggish:{weights}")
    wav = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1
    ours = model.examples(wav)
    theirs = waveform_to_examples(wav, 16000, return_tensor=False)
    assert ours.shape == theirs.shape == (2, 96, 64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vggish", "vggish:/nowhere/vggish-10086976.pth"])
def test_vggish_without_weights_is_one_fast_line(name):
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        load_model(name)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "\n" not in message and "vggish-10086976.pth" in message and "--embedding vggish:PATH" in message


def test_vggish_bad_file_is_one_line(tmp_path):
    path = tmp_path / "not-weights.pth"
    path.write_bytes(b"not a state dict")
    with pytest.raises(ModelError, match="cannot load VGGish weights") as err:
        load_model(f"vggish:{path}")
    assert "\n" not in str(err.value)
