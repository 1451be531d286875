"""The TF1 checkpoint reader and the PyTorch musicnn, on the weights of the installed musicnn package."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmttm.eval import musicnn
from ssmttm.eval.musicnn import PATCH_FRAMES, MusicnnNotInstalled, MusicnnTagger, log_mel, patches, weights_prefix
from ssmttm.eval.tf_checkpoint import CheckpointError, read_checkpoint, read_index

SR = 16000


@pytest.fixture(scope="module")
def mtt() -> dict[str, np.ndarray]:
    return read_checkpoint(f"{weights_prefix('MTT_musicnn')}/")


@pytest.fixture(scope="module")
def tagger() -> MusicnnTagger:
    return MusicnnTagger.load("MTT_musicnn")


def _tone(seconds: float = 10.0, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float = 10.0) -> np.ndarray:
    return (0.3 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)


def test_reader_finds_musicnns_variables(mtt):
    expected = {
        "batch_normalization/moving_variance": (1,),
        "conv2d/kernel": (7, 38, 1, 204),
        "conv2d_1/kernel": (7, 67, 1, 204),
        "conv2d_2/kernel": (128, 1, 1, 51),
        "conv2d_4/kernel": (32, 1, 1, 51),
        "conv2d_5/kernel": (7, 561, 1, 64),
        "conv2d_7/bias": (64,),
        "batch_normalization_9/gamma": (1506,),
        "dense/kernel": (1506, 200),
        "dense_1/kernel": (200, 50),
        "beta1_power": (),
    }
    assert {name: mtt[name].shape for name in expected} == expected
    # 11 batch norms x 4, 8 convs x 2, 2 dense x 2, each weight with its two Adam slots, and Adam's two powers.
    assert len(mtt) == 3 * (11 * 2 + 8 * 2 + 2 * 2) + 11 * 2 + 2
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in mtt.values())
    for i in range(11):
        prefix = "batch_normalization" + (f"_{i}" if i else "")
        assert (mtt[f"{prefix}/moving_variance"] > 0).all()
    assert mtt["dense/kernel"].std() > 1e-3  # real weights, not zeros


def test_reader_index_entries_tile_the_data_file():
    prefix = weights_prefix("MTT_musicnn")
    entries = sorted(read_index(f"{prefix}/.index").values(), key=lambda e: e.offset)
    assert entries[0].offset == 0
    assert all(a.offset + a.size == b.offset for a, b in itertools.pairwise(entries))
    assert entries[-1].offset + entries[-1].size == Path(f"{prefix}/.data-00000-of-00001").stat().st_size


def test_reader_errors_on_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nothing")
    src = weights_prefix("MTT_musicnn")
    shutil.copy(f"{src}/.index", tmp_path / "ckpt.index")
    with pytest.raises(CheckpointError, match="data file not found"):
        read_checkpoint(tmp_path / "ckpt")
    data = Path(f"{src}/.data-00000-of-00001").read_bytes()
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "ckpt")
    index = (tmp_path / "ckpt.index").read_bytes()
    (tmp_path / "ckpt.index").write_bytes(index[:-1])
    with pytest.raises(CheckpointError, match="magic"):
        read_checkpoint(tmp_path / "ckpt")
    assert issubclass(CheckpointError, ValueError)


def test_tags_are_musicnns():
    from musicnn import configuration  # plain lists, no tensorflow

    assert list(musicnn.MTT_TAGS) == configuration.MTT_LABELS
    assert list(musicnn.MSD_TAGS) == configuration.MSD_LABELS


def test_missing_musicnn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MusicnnNotInstalled, match="pip install --no-deps musicnn"):
        MusicnnTagger.load()


def test_patches_follow_batch_data():
    spec = np.arange(626 * 96, dtype=np.float32).reshape(626, 96)  # 10 s at hop 256
    windows = patches(spec)
    assert windows.shape == (3, PATCH_FRAMES, 96)  # starts 0, 187, 374; the partial fourth is dropped
    np.testing.assert_array_equal(windows[1], spec[187:374])
    assert patches(spec, hop=61).shape == (8, PATCH_FRAMES, 96)
    with pytest.raises(ValueError, match="at least 3 s"):
        patches(spec[:186])


def test_front_end_stays_finite_where_float16_overflows():
    loud = _tone(3.5, freq=1000.0, amp=0.99)
    mel = log_mel(loud)
    assert mel.dtype == np.float32 and mel.shape == (1 + len(loud) // 256, 96)
    assert np.isfinite(mel).all()
    assert mel.max() > np.log10(np.finfo(np.float16).max)  # musicnn's float16 cast would have made this inf


def test_taggram_and_embeddings_on_ten_seconds(tagger):
    tone, noise = _tone(), _noise()
    probs = tagger.taggram(tone)
    assert probs.shape == (3, 50) and len(tagger.tags) == 50
    assert ((probs >= 0) & (probs <= 1)).all()
    emb = tagger.embeddings(tone)
    assert emb.shape == (3, 200) and np.isfinite(emb).all()
    assert tagger.embeddings(_tone(20.0)).shape == (6, 200)
    noisy = tagger.taggram(noise)
    assert np.abs(probs.mean(0) - noisy.mean(0)).max() > 0.1
    assert not np.allclose(emb, tagger.embeddings(noise), atol=1e-2)
    assert tagger.taggram(tone, hop_seconds=1.0).shape == (8, 50)


def test_windows_are_independent_of_the_batch(tagger):
    x = torch.from_numpy(patches(log_mel(_noise())))  # (3, 187, 96)
    with torch.no_grad():
        together = tagger.net(x).logits
        alone = torch.cat([tagger.net(x[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_msd_model_loads_and_differs():
    msd = MusicnnTagger.load("MSD_musicnn")
    assert msd.tags[0] == "rock"
    assert msd.taggram(_noise()).shape == (3, 50)
    with pytest.raises(ValueError, match="unknown musicnn model"):
        MusicnnTagger.load("MTT_vgg")


def _tf_graph(w: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """models.py's build_musicnn transcribed literally, in TF's NHWC layout: (B, 187, 96) -> (logits, penultimate)."""
    t = {k: torch.from_numpy(v) for k, v in w.items()}

    def bn(h: torch.Tensor, i: int) -> torch.Tensor:  # over the last axis, as tf.layers.batch_normalization
        p = "batch_normalization" + (f"_{i}" if i else "")
        mean, var, gamma, beta = (t[f"{p}/{f}"] for f in ("moving_mean", "moving_variance", "gamma", "beta"))
        return (h - mean) / torch.sqrt(var + 1e-3) * gamma + beta

    def conv(h: torch.Tensor, i: int, same: bool = False) -> torch.Tensor:  # NHWC, ReLU, valid or TF's same
        p = "conv2d" + (f"_{i}" if i else "")
        kernel = t[f"{p}/kernel"]
        if same:
            kh, kw = kernel.shape[:2]
            h = F.pad(h, (0, 0, (kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
        out = F.conv2d(h.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), t[f"{p}/bias"])
        return F.relu(out.permute(0, 2, 3, 1))

    def pad_time(h: torch.Tensor) -> torch.Tensor:
        return F.pad(h, (0, 0, 0, 0, 3, 3))

    def block(h: torch.Tensor, i: int, same: bool) -> torch.Tensor:
        return bn(conv(h, i, same), i + 1).amax(dim=2)  # max-pool over the whole frequency axis, squeezed

    x = bn(x[..., None], 0)  # (B, T, 96, 1)
    front = torch.cat(
        [block(pad_time(x), 0, False), block(pad_time(x), 1, False)] + [block(x, i, True) for i in (2, 3, 4)], dim=2
    )[..., None]  # (B, T, 561, 1)
    c1 = bn(conv(pad_time(front), 5), 6).permute(0, 1, 3, 2)  # (B, T, 64, 1)
    r2 = bn(conv(pad_time(c1), 6), 7).permute(0, 1, 3, 2) + c1
    r3 = bn(conv(pad_time(r2), 7), 8).permute(0, 1, 3, 2) + r2
    h = torch.cat([front, c1, r2, r3], dim=2)  # (B, T, 753, 1)
    pooled = torch.cat([h.amax(dim=1), h.mean(dim=1)], dim=2).reshape(len(h), -1)  # (B, 1506)
    pen = bn(F.relu(bn(pooled, 9) @ t["dense/kernel"] + t["dense/bias"]), 10)
    return pen @ t["dense_1/kernel"] + t["dense_1/bias"], pen


def test_network_matches_a_literal_transcription_of_the_tf_graph(mtt, tagger):
    x = torch.from_numpy(patches(log_mel(np.concatenate([_tone(5.0), _noise(5.0)]))))  # (3, 187, 96)
    logits, pen = _tf_graph(mtt, x)
    with torch.no_grad():
        out = tagger.net(x)
    torch.testing.assert_close(out.penultimate, pen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=1e-4)
