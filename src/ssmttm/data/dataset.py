"""Training windows from a prepared collection: random fixed-length crops with their captions.

The crop of clip i in epoch e is drawn from its own generator, seeded by (seed, epoch, i), so a
window does not depend on worker count, data-loader order or what was read before: a resumed run
sees exactly the windows it would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssmttm.data.shards import TokenStore


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
        start = 0
        if frames > self.window:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start = int(rng.integers(0, frames - self.window + 1))
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
