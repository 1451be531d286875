"""Training checkpoints: atomic, complete enough for a bit-exact resume, and pickle-free to read.

A checkpoint holds the model and optimizer (through Fabric, which gathers sharded states), the
scheduler, the data position, the counters and the RNG states of Python, NumPy and torch. Every
value is a tensor, number, string or container of them, so `torch.load(weights_only=True)` reads
it. It is written to a hidden temporary file, flushed to disk and renamed over `last.ckpt`: a run
killed mid-write still has its previous checkpoint, and the newest one is always `last.ckpt`,
whichever trigger (steps, minutes, the end, a stop) wrote it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssmttm.files import replace_durably, staging_path


@dataclass
class Counters:
    """Where a run stands; all cumulative over resumes."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # sequence columns (B x frames) trained on, over all devices
    flops: float = 0.0  # training FLOPs, from the backbone's formula (training/flops.py)
    wall_s: float = 0.0  # seconds spent in training steps (validation and checkpoints excluded)
    skipped_steps: int = 0  # steps dropped by the non-finite guard
    bad_streak: int = 0  # consecutive skipped steps up to now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_as_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a checkpoint may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(fabric, path: Path, state: dict[str, Any]) -> None:
    """Write `state` (modules and optimizers in it are saved as state dicts) atomically to `path`."""
    tmp = staging_path(path)
    if fabric.global_rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.global_rank == 0:
        replace_durably(tmp, path)  # bytes on disk before the rename, so a power cut cannot leave it empty
    fabric.barrier()


def load_checkpoint(fabric, path: Path, objects: dict[str, Any]) -> dict[str, Any]:
    """Restore `objects` (model, optimizer) in place from `path`; returns the checkpoint's other entries."""
    return fabric.load(path, objects, weights_only=True)
