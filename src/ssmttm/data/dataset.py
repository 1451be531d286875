"""Training windows from a prepared collection: random fixed-length crops with their captions.

The crop of clip i in epoch e is drawn from its own generator, seeded by (seed, epoch, i), so a
window does not depend on worker count, data-loader order or what was read before: a resumed run
sees exactly the windows it would have seen. `crop_start` is that rule, and `TokenWindows` (the
LM's tokens) and `LatentWindows` (stage 2's codebook-0 tokens and residual latents) both follow
it, so both crop clip i in epoch e at the same frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmttm.data.shards import TokenStore

STD_FLOOR = 1e-4  # latent_statistics' least std: a constant channel then scales by 1e4, not by 1/0


def crop_start(frames: int, window: int, seed: int, epoch: int, index: int) -> int:
    """The first frame of clip `index`'s window in `epoch`: 0 for a clip no longer than the window,
    else uniform over every start that fits, drawn from a generator seeded by (seed, epoch, index)."""
    if frames <= window:
        return 0
    rng = np.random.default_rng([seed, epoch, index])
    return int(rng.integers(0, frames - window + 1))


class TokenWindows(Dataset):
    """Item i: {"codes": (K, window) int64, "caption": str, "id": str, "frames": real frames,
    "start_s": seconds into the piece where the window starts}.

    Clips longer than the window are cropped at a random frame; shorter ones are padded on the
    right with `pad_id` (the LM's special id, which the loss skips).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        window_frames: int = 2584,
        num_codebooks: int | None = None,
        pad_id: int | None = None,
        seed: int = 0,
    ) -> None:
        self.store = TokenStore(root)
        self.records = self.store.split(split)
        if not self.records:
            raise ValueError(f"{root} has no clips in split {split!r}")
        codec = self.store.manifest["codec"]
        self.num_codebooks = codec["num_codebooks"] if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= codec["num_codebooks"]:
            raise ValueError(f"the collection has {codec['num_codebooks']} codebooks; cannot read {self.num_codebooks}")
        self.pad_id = codec["cardinality"] if pad_id is None else pad_id
        self.frame_rate = float(codec["frame_rate"])
        self.window = window_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        tokens = self.store.tokens(record)[: self.num_codebooks]  # (K, frames), memory-mapped
        frames = tokens.shape[1]
        start = crop_start(frames, self.window, self.seed, self.epoch, index)
        window = np.full((self.num_codebooks, self.window), self.pad_id, dtype=np.int64)
        real = min(frames, self.window)
        window[:, :real] = tokens[:, start : start + real]
        start_s = float(record.get("start_s", 0.0)) + start / self.frame_rate  # where the window starts in the piece
        return {
            "codes": torch.from_numpy(window),
            "caption": record["caption"],
            "id": record["id"],
            "frames": real,
            "start_s": start_s,
        }


class LatentWindows(Dataset):
    """Stage 2's training windows, from a collection prepared with `--latents`. Item i:
    {"coarse": (W,) int64 codebook-0 tokens, "latents": (D, W) float32 residual, "frame_mask": (W,)
    bool, True on the clip's real frames, "caption", "id", "frames": real frames, "start_s"}.

    Crops follow `crop_start`, as TokenWindows' do; a clip shorter than the window is padded on the
    right with token 0 and zero latents, which `frame_mask` marks.
    """

    def __init__(self, root: str | Path, split: str = "train", window_frames: int = 2584, seed: int = 0) -> None:
        self.store = TokenStore(root)
        self.latent_dim = self.store.latent_dim  # a one-line error for a collection without latents
        self.records = self.store.split(split)
        if not self.records:
            raise ValueError(f"{root} has no clips in split {split!r}")
        self.frame_rate = self.store.frame_rate
        self.window = window_frames
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        tokens = self.store.tokens(record)[0]  # (frames,), memory-mapped
        latents = self.store.latents(record)  # (D, frames) float16, memory-mapped
        start = crop_start(tokens.shape[0], self.window, self.seed, self.epoch, index)
        real = min(tokens.shape[0], self.window)
        coarse = np.zeros(self.window, dtype=np.int64)  # (W,)
        coarse[:real] = tokens[start : start + real]
        window = np.zeros((self.latent_dim, self.window), dtype=np.float32)  # (D, W)
        window[:, :real] = latents[:, start : start + real]
        mask = np.zeros(self.window, dtype=bool)  # (W,)
        mask[:real] = True
        return {
            "coarse": torch.from_numpy(coarse),
            "latents": torch.from_numpy(window),
            "frame_mask": torch.from_numpy(mask),
            "caption": record["caption"],
            "id": record["id"],
            "frames": real,
            "start_s": float(record.get("start_s", 0.0)) + start / self.frame_rate,
        }


def latent_statistics(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (D,) float64 of the residual latents over every real frame of the
    split's clips (std with ddof 0, as np.std).

    Streaming: each clip's mean and sum of squared deviations merge into the running ones (Chan et
    al.'s pairwise update), so memory is one clip and there is no cancellation of E[x^2] - E[x]^2.
    The std is floored at STD_FLOOR (1e-4), so that dividing by it is safe for a constant channel.
    """
    store = TokenStore(root)
    records = store.split(split)
    dim = store.latent_dim
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)  # frames so far, their mean, sum of squared deviations
    for record in records:
        x = store.latents(record).astype(np.float64)  # (D, frames)
        n = x.shape[1]
        if n == 0:
            continue
        clip_mean = x.mean(axis=1)  # (D,)
        clip_m2 = np.square(x - clip_mean[:, None]).sum(axis=1)  # (D,)
        delta = clip_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + clip_m2 + np.square(delta) * (count * n / total)
        count = total
    if count == 0:
        raise ValueError(f"{root} has no frames in split {split!r}")
    return mean, np.maximum(np.sqrt(m2 / count), STD_FLOOR)
