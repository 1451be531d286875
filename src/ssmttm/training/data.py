"""Training data: windows of token shards with their cached caption embeddings, in an order that a
resumed run can pick up mid-epoch.

Captions are encoded once, before training, into the text issue's embedding cache; workers only
read the small per-caption files. The order of epoch e is a permutation seeded by (seed, e), cut
into per-device shares and micro-batches, so a position is two numbers (epoch, micro-batch) and a
resumed run skips straight to it without reading what came before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ssmttm.beat_clock import tempo_clock
from ssmttm.config import ConfigError
from ssmttm.data.dataset import LatentWindows, TokenWindows
from ssmttm.data.shards import MANIFEST, PLAN
from ssmttm.text import EmbeddingCache, TextEncoder, load_text_encoder, pad_left
from ssmttm.text.stated_tempo import stated_bpm

log = logging.getLogger(__name__)


class EpochDataset(Protocol):
    """A map-style dataset whose items may change with the epoch (random crops, say), but only
    with it: item i of epoch e is the same in every run, so a resumed run sees what it would have."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class EncoderKey:
    """What the embedding cache needs of an encoder to find its files: no model in the workers."""

    id: str
    dim: int


class CaptionedWindows(Dataset):
    """Windows' items (TokenWindows' or LatentWindows') plus "text": (L_i, D) float32, the caption's
    cached embedding, and "clock": (2,) the beat clock of the tempo the caption states
    (beat_clock.py), NaN when it states none."""

    def __init__(self, windows: TokenWindows | LatentWindows, cache: EmbeddingCache, key: EncoderKey) -> None:
        self.windows, self.cache, self.key = windows, cache, key

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.windows.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.windows[index]
        emb = self.cache.get(self.key, item["caption"])  # type: ignore[arg-type]
        if emb is None:
            raise RuntimeError(f"caption of {item['id']} is not in the embedding cache {self.cache.root}")
        clock = tempo_clock(stated_bpm(item["caption"]), self.windows.frame_rate, item["start_s"])
        return {**item, "text": emb, "clock": torch.tensor(clock, dtype=torch.float64)}


def require_prepared(collection: str | Path) -> None:
    """A FileNotFoundError that says what to run first, unless `collection` is a prepared (merged)
    one: a newcomer's first run starts before any data exists, so `data merge` alone misleads."""
    root = Path(collection)
    if (root / MANIFEST).is_file():
        return
    if (root / PLAN).is_file():  # prepare started here but did not finish, or its shares are not merged
        raise FileNotFoundError(
            f"{root} is prepared only in part (no {MANIFEST}): run its `ssmttm data prepare` again to finish it, "
            f"or `ssmttm data merge --out {root}` once every --shard share is done"
        )
    raise FileNotFoundError(
        f"no prepared data in {root}: run `ssmttm data prepare --source AUDIO_DIR --out {root}` first "
        f"(for the synthetic corpus: `ssmttm data synth --n 1000 --seed 1 --out corpus`, then prepare "
        f"with --source corpus); `ssmttm data merge --out {root}` if it was prepared in shares"
    )


def captioned_splits(
    windows: dict[str, TokenWindows | LatentWindows], data: Any, fabric: Any, text_dim: int, dim_key: str
) -> tuple[dict[str, CaptionedWindows], TextEncoder]:
    """Each split's windows with their captions' cached embeddings: the encoder `data.text_encoder`
    (checked to give `text_dim`, the config key `dim_key`), every caption encoded once, by one
    process, into `data.embedding_cache` (default: the collection's text-embeddings/)."""
    encoder = load_text_encoder(data.text_encoder, "cpu", data.max_text_tokens or None)
    if encoder.dim != text_dim:
        raise ConfigError(f"text encoder {data.text_encoder} gives {encoder.dim}-d embeddings; {dim_key} is {text_dim}")
    cache = EmbeddingCache(data.embedding_cache or Path(data.collection) / "text-embeddings")
    if fabric.global_rank == 0:  # one process encodes; the others read the files it wrote
        fill_cache(encoder, cache, [r["caption"] for w in windows.values() for r in w.records])
    fabric.barrier()
    key = EncoderKey(encoder.id, encoder.dim)
    return {split: CaptionedWindows(w, cache, key) for split, w in windows.items()}, encoder


def fill_cache(encoder: TextEncoder, cache: EmbeddingCache, captions: list[str], batch: int = 64) -> None:
    """Encode every caption not yet in the cache (each distinct caption once)."""
    todo = [c for c in dict.fromkeys(captions) if not cache.path(encoder.id, c).is_file()]
    for start in tqdm(range(0, len(todo), batch), desc="encode captions", unit="batch", disable=not todo):
        cache.embed(encoder, todo[start : start + batch])
    if todo:
        log.info("encoded %d captions into %s", len(todo), cache.root)


def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """codes (B, K, T) int64, text (B, L, D) left-padded, text_mask (B, L), frames (B,) real frames,
    clock (B, 2)."""
    text, mask = pad_left([item["text"] for item in items], items[0]["text"].shape[-1], "cpu")
    return {
        "codes": torch.stack([item["codes"] for item in items]),
        "text": text,
        "text_mask": mask,
        "frames": torch.tensor([item["frames"] for item in items]),
        "clock": torch.stack([item["clock"] for item in items]),
    }


class EpochSampler(Sampler[list[int]]):
    """Micro-batches of one device's share of a seeded per-epoch permutation, from a given start.

    Every device drops the same tail, so all take the same number of micro-batches per epoch.
    """

    def __init__(self, size: int, micro_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.micro_batch, self.seed, self.rank, self.world = size, micro_batch, seed, rank, world
        self.batches_per_epoch = size // world // micro_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"{size} training clips cannot fill one micro-batch of {micro_batch} on {world} devices")
        self.epoch, self.start = 0, 0

    def position(self, epoch: int, start: int) -> None:
        """The next iteration yields epoch `epoch` from its micro-batch `start`."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        share = order[self.rank :: self.world].tolist()
        for b in range(self.start, self.batches_per_epoch):
            yield share[b * self.micro_batch : (b + 1) * self.micro_batch]


class TrainBatches:
    """An endless stream of training micro-batches that knows its position (epoch, micro-batch)."""

    def __init__(
        self, dataset: EpochDataset, sampler: EpochSampler, collate_fn: Callable[[list[Any]], Any], workers: int
    ) -> None:
        self.dataset, self.sampler = dataset, sampler
        # The loader draws its workers' base seed from its own generator, never from the global
        # RNG, so starting a loader (at an epoch boundary or on resume) changes no dropout mask.
        self.loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(0),
        )
        self.epoch, self.batch = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self) -> Iterator[Any]:
        while True:
            self.dataset.set_epoch(self.epoch)  # workers start after this, so they see the epoch
            self.sampler.position(self.epoch, self.batch)
            for batch in self.loader:
                self.batch += 1
                yield batch
            self.epoch, self.batch = self.epoch + 1, 0
