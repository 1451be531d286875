"""Reference statistics, computed once per (embedding, reference set) and kept on disk.

A reference set's Gaussian costs an embedding pass over every clip; the generated side changes at
every evaluation, the reference rarely. The key is the embedding's id and a hash of the reference
clips' bytes, so a changed, added or removed clip, or another embedding, is a miss, never a stale
hit. Files are safetensors (mean, cov, count), written atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from ssmttm.eval.frechet import GaussianStats
from ssmttm.files import atomic_write

CHUNK = 1 << 20


def default_cache_folder() -> Path:
    """$XDG_CACHE_HOME/ssmttm/reference-stats, or ~/.cache/ssmttm/reference-stats."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ssmttm" / "reference-stats"


def content_hash(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of every file, in the order of their sorted digests: the same set of
    clips gives the same hash whatever their names or order."""
    digests = sorted(_file_digest(Path(p)) for p in paths)
    return hashlib.sha256("".join(digests).encode()).hexdigest()


class StatsCache:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = default_cache_folder() if folder is None else Path(folder)

    def path(self, embedding_id: str, content: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", embedding_id)
        return self.folder / f"{safe}-{content[:32]}.safetensors"

    def load(self, embedding_id: str, content: str) -> GaussianStats | None:
        """The cached statistics, or None (an unreadable entry counts as none: it is recomputed)."""
        path = self.path(embedding_id, content)
        if not path.is_file():
            return None
        try:
            tensors = load(path.read_bytes())
            return GaussianStats(tensors["mean"], tensors["cov"], int(tensors["count"][0]))
        except (OSError, ValueError, KeyError):
            return None

    def store(self, embedding_id: str, content: str, stats: GaussianStats) -> None:
        data = save({"mean": stats.mean, "cov": stats.cov, "count": np.array([stats.count], dtype=np.int64)})
        atomic_write(self.path(embedding_id, content), lambda f: f.write(data))

    def get(self, embedding_id: str, content: str, compute: Callable[[], GaussianStats]) -> tuple[GaussianStats, bool]:
        """The cached statistics and True, or `compute()`'s, stored, and False."""
        cached = self.load(embedding_id, content)
        if cached is not None:
            return cached, True
        stats = compute()
        self.store(embedding_id, content, stats)
        return stats, False


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
