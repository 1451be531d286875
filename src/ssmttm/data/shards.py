"""Token shards on disk: written atomically, unit by unit, and read back memory-mapped.

A prepared collection is a folder:

    plan.json            what will be prepared: settings, codec, units of items, split, early failures
    shards/NAME.npy      uint16 tokens (K, frames) of every clip of one unit, end to end
    shards/NAME.latents.npy  with --latents only: float16 two-stage residuals (D, frames), at the
                         tokens' offsets (a record's offset and frames index both)
    shards/NAME.json     that unit's clip records (offset and length in the .npy) and failures;
                         written last, so its presence means the unit is complete
    index.jsonl          every clip record, in unit order           } written by `merge` once
    failures.jsonl       every input that was skipped, with why     } every unit is complete
    manifest.json        counts, hours, codec id and frame rate,    }
                         "latents" (true when stored; the codec's "latent_dim" is then D)

Nothing is ever half-written (ssmttm.files).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmttm.files import atomic_write, read_json, read_jsonl, write_json, write_jsonl

SHARDS = "shards"
PLAN, INDEX, FAILURES, MANIFEST = "plan.json", "index.jsonl", "failures.jsonl", "manifest.json"
LATENTS = ".latents.npy"  # the suffix of a unit's latents file, beside its NAME.npy


def unit_done(root: Path, name: str) -> bool:
    return (root / SHARDS / f"{name}.json").is_file()


def write_unit(
    root: Path,
    name: str,
    tokens: np.ndarray,
    records: list[dict],
    failures: list[dict],
    latents: np.ndarray | None = None,
) -> None:
    """Tokens (and latents (D, frames), if given) first, then the records that point into them: a
    unit is complete when its .json exists."""
    if tokens.size and int(tokens.max()) > np.iinfo(np.uint16).max:
        raise ValueError("token ids above 65535 do not fit the uint16 shards")
    if latents is not None and (latents.dtype != np.float16 or latents.shape[1:] != tokens.shape[1:]):
        raise ValueError(f"latents must be float16 (D, {tokens.shape[1]}), got {latents.dtype} {latents.shape}")
    atomic_write(root / SHARDS / f"{name}.npy", lambda f: np.save(f, tokens.astype(np.uint16), allow_pickle=False))
    if latents is not None:
        atomic_write(root / SHARDS / f"{name}{LATENTS}", lambda f: np.save(f, latents, allow_pickle=False))
    write_json(root / SHARDS / f"{name}.json", {"records": records, "failures": failures})


@dataclass
class MergeResult:
    clips: int
    failures: int
    missing_units: list[str]


def merge(root: Path) -> MergeResult:
    """Build index.jsonl, failures.jsonl and manifest.json from complete units.

    With units missing (another machine's share of a --shard i/n run, say) nothing is written and
    the missing units are returned.
    """
    plan = read_json(root / PLAN)
    names = [unit["name"] for unit in plan["units"]]
    missing = [name for name in names if not unit_done(root, name)]
    if missing:
        return MergeResult(0, 0, missing)
    records, failures = [], list(plan["failures"])
    for name in names:
        unit = read_json(root / SHARDS / f"{name}.json")
        records.extend(unit["records"])
        failures.extend(unit["failures"])
    write_jsonl(root / INDEX, records)
    write_jsonl(root / FAILURES, failures)
    write_json(root / MANIFEST, _manifest(plan, records, failures))
    return MergeResult(len(records), len(failures), [])


def _manifest(plan: dict, records: list[dict], failures: list[dict]) -> dict:
    codec = plan["codec"]
    splits: dict[str, dict[str, Any]] = {}
    for record in records:
        split = splits.setdefault(record["split"], {"clips": 0, "frames": 0, "songs": set()})
        split["clips"] += 1
        split["frames"] += record["frames"]
        split["songs"].add(record["song"])
    summary = {
        name: {"clips": s["clips"], "songs": len(s["songs"]), "hours": s["frames"] / codec["frame_rate"] / 3600}
        for name, s in sorted(splits.items())
    }
    return {
        "codec": codec,
        "clips": len(records),
        "hours": sum(s["hours"] for s in summary.values()),
        "splits": summary,
        "failures": len(failures),
        "excluded": len(plan["excluded"]),
        "shards": [unit["name"] for unit in plan["units"]],
        "settings": plan["settings"],
        "latents": bool(plan["settings"].get("latents", False)),
    }


class TokenStore:
    """A prepared collection, read-only: the index, and each clip's tokens memory-mapped."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a prepared collection (no {MANIFEST}): run `ssmttm data prepare --out "
                f"{self.root} ...` first, or `ssmttm data merge --out {self.root}` if it was prepared in shares"
            )
        self.manifest = read_json(manifest)
        self.records = read_jsonl(self.root / INDEX)
        self._shards: dict[str, np.ndarray] = {}
        self._latents: dict[str, np.ndarray] = {}

    @property
    def frame_rate(self) -> float:
        return float(self.manifest["codec"]["frame_rate"])

    @property
    def has_latents(self) -> bool:
        """Whether each clip's two-stage residual was stored (`ssmttm data prepare --latents`)."""
        return bool(self.manifest.get("latents", False))

    @property
    def latent_dim(self) -> int:
        """D, the channels of `latents(record)`."""
        self._require_latents()
        return int(self.manifest["codec"]["latent_dim"])

    def split(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["split"] == name]

    def tokens(self, record: dict[str, Any]) -> np.ndarray:
        """(K, frames) uint16, a view into the memory-mapped shard."""
        shard = self._shards.get(record["shard"])
        if shard is None:
            shard = np.load(self.root / SHARDS / f"{record['shard']}.npy", mmap_mode="r")
            self._shards[record["shard"]] = shard
        return shard[:, record["offset"] : record["offset"] + record["frames"]]

    def latents(self, record: dict[str, Any]) -> np.ndarray:
        """(D, frames) float16, the clip's two-stage residual: a view into the memory-mapped file."""
        self._require_latents()
        shard = self._latents.get(record["shard"])
        if shard is None:
            shard = np.load(self.root / SHARDS / f"{record['shard']}{LATENTS}", mmap_mode="r")
            self._latents[record["shard"]] = shard
        return shard[:, record["offset"] : record["offset"] + record["frames"]]

    def _require_latents(self) -> None:
        if not self.has_latents:
            raise ValueError(
                f"{self.root} holds no latents: prepare it again into a new folder with `ssmttm data prepare --latents`"
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)
