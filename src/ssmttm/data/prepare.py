"""Prepare a collection: segment, (remove vocals), encode with a codec, split by song, write shards.

The work is cut into units of a few source files each, in a fixed order. A unit is written
atomically and only when complete, so a run killed at any moment and started again does only the
units that are missing, and produces the same bytes as an uninterrupted run. `--shard i/n` gives
a machine every n-th unit; `merge` joins the units of all machines into one index.

With `latents`, every unit also stores each clip's two-stage target (`Codec.two_stage_target`:
the residual a stage 2 model learns), computed from the same audio as the tokens, float16, at the
tokens' offsets (shards.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssmttm.audio import AudioError, load_audio
from ssmttm.codecs import Codec, CodecError, load_codec
from ssmttm.data.shards import PLAN, MergeResult, merge, unit_done, write_unit
from ssmttm.data.sources import Failure, SourceItem, discover
from ssmttm.files import read_json, write_json

log = logging.getLogger(__name__)

# (C, N) audio at a sample rate -> the same audio without vocals
Separator = Callable[[np.ndarray, int], np.ndarray]


class PrepareError(ValueError):
    """Settings that cannot work; raised before any audio is touched."""


@dataclass
class PrepareConfig:
    source: str
    out: str
    codec: str
    captions: str | None = None
    num_codebooks: int | None = None  # the first K of the codec's codebooks; None keeps all
    segment_s: float = 30.0
    min_segment_s: float = 1.0  # a tail shorter than this is dropped (a whole short file is kept)
    validation_fraction: float = 0.05
    exclude: str | None = None  # file of ids (item, song or file path), one per line
    remove_vocals: bool = False
    items_per_unit: int = 16
    silence_dbfs: float = -60.0
    latents: bool = False  # also store each clip's two-stage residual, (D, frames) float16

    def settings(self) -> dict[str, Any]:
        """What must match for a run to resume another: everything that shapes the output."""
        keep = (
            "codec",
            "num_codebooks",
            "segment_s",
            "min_segment_s",
            "validation_fraction",
            "remove_vocals",
            "items_per_unit",
            "silence_dbfs",
            "latents",
        )
        return {key: value for key, value in asdict(self).items() if key in keep}


@dataclass
class PrepareResult:
    units_total: int
    units_done_before: int
    units_encoded: int
    items_encoded: int
    merge: MergeResult | None  # None when other shares are still missing


def prepare(
    config: PrepareConfig,
    workers: int = 1,
    share: tuple[int, int] = (0, 1),
    separator: Separator | None = None,
    progress: bool = False,
) -> PrepareResult:
    """Prepare `config.source` into `config.out`; see the module docstring."""
    index, count = share
    if not 0 <= index < count:
        raise PrepareError(f"--shard {index}/{count}: i must be in 0..n-1")
    if config.remove_vocals and separator is None:
        separator = load_vocal_remover()  # fails here, before any work, when demucs is missing
    root = Path(config.out)
    codec = load_codec(config.codec, config.num_codebooks)
    if config.latents and codec.latent_layout is None:
        raise PrepareError(
            f"--latents: the codec {config.codec!r} has no continuous latents; prepare without --latents"
        )
    plan = _load_or_write_plan(config, codec, root)
    units = plan["units"]
    mine = [u for k, u in enumerate(units) if k % count == index]
    todo = [u for u in mine if not unit_done(root, u["name"])]
    log.info("%d units in all, %d in this share, %d already done", len(units), len(mine), len(mine) - len(todo))
    job = _UnitJob(config, plan["codec"], plan["split"], separator)
    items_encoded = 0
    bar = tqdm(total=len(todo), disable=not progress, desc="preparing", unit="unit")
    for unit, (tokens, latents, records, failures) in _run(job, todo, workers, codec):
        write_unit(root, unit["name"], tokens, records, failures, latents)
        items_encoded += len(unit["items"])
        log.info("%s: encoded %d items into %d clips", unit["name"], len(unit["items"]), len(records))
        bar.update()
    bar.close()
    merged = merge(root)
    return PrepareResult(
        len(units), len(mine) - len(todo), len(todo), items_encoded, None if merged.missing_units else merged
    )


def load_vocal_remover() -> Separator:
    """Demucs htdemucs, keeping the no-vocals stem, if the package and its weights are here."""
    try:
        from demucs.api import Separator as DemucsSeparator  # type: ignore[import-not-found]
    except ImportError:
        raise PrepareError(
            "--remove-vocals needs the demucs package and its htdemucs weights; demucs depends on torchaudio, "
            "which cannot be installed here. Install both where possible, or prepare without --remove-vocals"
        ) from None
    try:
        model = DemucsSeparator(model="htdemucs")
    except Exception as err:
        raise PrepareError(f"--remove-vocals: demucs could not load htdemucs ({err})") from None

    def no_vocals(wav: np.ndarray, sample_rate: int) -> np.ndarray:
        _, stems = model.separate_tensor(torch.from_numpy(wav), sample_rate)
        rest = sum(stem for name, stem in stems.items() if name != "vocals")
        return rest.numpy()

    return no_vocals


# -- the plan ------------------------------------------------------------------------------------


def _load_or_write_plan(config: PrepareConfig, codec: Codec, root: Path) -> dict[str, Any]:
    items, failures = discover(Path(config.source), Path(config.captions) if config.captions else None)
    excluded_ids = _read_exclusions(config.exclude)
    kept = [i for i in items if not ({i.id, i.song, i.file} & excluded_ids)]
    excluded = [{"file": i.file, "id": i.id} for i in items if {i.id, i.song, i.file} & excluded_ids]
    per_unit = config.items_per_unit
    plan = {
        "settings": config.settings(),
        "codec": {
            "name": codec.name,
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "num_codebooks": codec.num_codebooks,
            "cardinality": codec.cardinality,
            **({"latent_dim": codec.latent_dim(1, codec.num_codebooks)} if config.latents else {}),
        },
        "units": [
            {"name": f"unit-{k:05d}", "items": [asdict(i) for i in kept[k * per_unit : (k + 1) * per_unit]]}
            for k in range(math.ceil(len(kept) / per_unit))
        ],
        "split": _split_by_song([i.song for i in kept], config.validation_fraction),
        "failures": [asdict(f) for f in failures],
        "excluded": excluded,
    }
    path = root / PLAN
    if path.is_file():
        previous = read_json(path)
        previous["settings"].setdefault("latents", False)  # plans from before --latents existed
        if previous["settings"]["latents"] != config.latents:
            had = "with" if previous["settings"]["latents"] else "without"
            raise PrepareError(f"{root} was prepared {had} --latents; prepare into a new --out folder")
        if previous != json.loads(json.dumps(plan)):
            what = "settings" if previous.get("settings") != plan["settings"] else "source files or captions"
            raise PrepareError(f"{root} was prepared with other {what}; use a new --out folder")
    else:
        write_json(path, plan)
    return plan


def _read_exclusions(path: str | None) -> set[str]:
    if path is None:
        return set()
    file = Path(path)
    if not file.is_file():
        raise PrepareError(f"exclusion list not found: {file}")
    return {
        line.strip() for line in file.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if line.strip()
    }


def _split_by_song(songs: list[str], fraction: float) -> dict[str, str]:
    """Songs ordered by a hash of their name; the first `fraction` of them go to validation.

    A song is never in both splits, and the split does not depend on file order or on shares.
    """
    unique = sorted(set(songs), key=lambda s: hashlib.sha1(s.encode("utf-8", "surrogateescape")).hexdigest())
    count = round(len(unique) * fraction)
    if fraction > 0 and len(unique) > 1:
        count = min(max(count, 1), len(unique) - 1)
    return {song: "validation" if rank < count else "train" for rank, song in enumerate(unique)}


# -- encoding a unit -----------------------------------------------------------------------------


@dataclass
class _UnitJob:
    config: PrepareConfig
    codec_info: dict[str, Any]
    split: dict[str, str]
    separator: Separator | None

    def __call__(self, codec: Codec, unit: dict[str, Any]) -> _UnitOutput:
        """Encode every item of a unit: (tokens (K, frames), latents (D, frames) float16 or None,
        clip records, failures).

        An item that cannot be used is one failure with its reason, and the unit goes on.
        """
        blocks, latent_blocks, records, failures = [], [], [], []
        offset = 0
        for fields in unit["items"]:
            item = SourceItem(**fields)
            try:
                clips = self._encode(codec, item)
            except (AudioError, _Skip) as err:
                failures.append(asdict(Failure(item.file, str(err))))
                continue
            for segment, start_s, codes, residual in clips:
                records.append(self._record(item, unit["name"], segment, start_s, offset, codes.shape[1]))
                blocks.append(codes)
                latent_blocks.append(residual)
                offset += codes.shape[1]
        k = self.codec_info["num_codebooks"]
        tokens = np.concatenate(blocks, axis=1) if blocks else np.zeros((k, 0), dtype=np.int64)
        latents = None
        if self.config.latents:
            d = self.codec_info["latent_dim"]
            latents = np.concatenate(latent_blocks, axis=1) if blocks else np.zeros((d, 0), dtype=np.float16)
        return tokens, latents, records, failures

    def _encode(self, codec: Codec, item: SourceItem) -> list[tuple[int, float, np.ndarray, np.ndarray | None]]:
        """(segment, start in seconds, codes (K, T), residual (D, T) float16 or None) of every clip of
        an item, or a _Skip.

        All or nothing: an item that fails part-way must not leave some of its clips in the unit.
        """
        clips = []
        for segment, start_s, wav, rate in self._segments(item):
            audio = torch.from_numpy(wav)[None]  # (1, C, N): one read of the audio serves both
            try:
                codes = codec.encode(audio, rate)[0].numpy()
                residual = self._residual(codec, audio, rate, codes, segment) if self.config.latents else None
            except CodecError as err:  # the audio, not the codec: encode's other errors are bugs
                raise _Skip(f"segment {segment} could not be encoded ({err})") from None
            clips.append((segment, start_s, codes, residual))
        return clips

    def _residual(self, codec: Codec, audio: torch.Tensor, rate: int, codes: np.ndarray, segment: int) -> np.ndarray:
        """The two-stage residual (D, T) of a segment whose tokens are `codes` (K, T), as float16.

        float16 halves the bytes of float32, and the residual fits it comfortably: the embedded
        codec's stays within about 0.5 in absolute value (float16 reaches 65504), and its relative
        rounding error of at most 2**-11 is far below what a stage 2 model resolves.
        """
        target = codec.two_stage_target(audio, rate)
        coarse = target.coarse[0, 0].numpy()  # (T,)
        if not np.array_equal(coarse, codes[0]):  # one quantizer's first stage: a mismatch is a codec bug
            raise RuntimeError(
                f"{codec.name}: two_stage_target's codebook 0 differs from encode's on segment {segment} "
                f"({int((coarse != codes[0]).sum())} of {codes.shape[1]} frames); this is a bug in the codec"
            )
        residual = target.residual[0].numpy()  # (D, T) float32
        peak = float(np.abs(residual).max()) if residual.size else 0.0
        if not math.isfinite(peak) or peak > _HALF_MAX:
            raise RuntimeError(
                f"{codec.name}: the two-stage residual of segment {segment} peaks at {peak}, beyond float16 storage; "
                "this is a bug in the codec"
            )
        return residual.astype(np.float16)

    def _segments(self, item: SourceItem) -> Iterator[tuple[int, float, np.ndarray, int]]:
        cfg = self.config
        wav, rate = load_audio(Path(cfg.source) / item.file)
        _check_finite(wav)  # before the silence check: the RMS of NaN samples reads as silence
        frame_samples = rate / self.codec_info["frame_rate"]
        if wav.shape[1] < frame_samples:
            raise _Skip("shorter than one codec frame")
        if _dbfs(wav) < cfg.silence_dbfs:
            raise _Skip(f"silent (below {cfg.silence_dbfs:g} dBFS)")
        if self.separator is not None:
            wav = np.asarray(self.separator(wav, rate), dtype=np.float32)
            _check_finite(wav, " after vocal removal")
        length = round(cfg.segment_s * rate)
        starts = range(0, wav.shape[1], length)
        for segment, start in enumerate(starts):
            piece = wav[:, start : start + length]
            if segment > 0 and piece.shape[1] < cfg.min_segment_s * rate:
                break  # a short tail; a whole short file was kept as its only segment
            if _dbfs(piece) < cfg.silence_dbfs:
                continue  # a silent stretch inside a song is not a clip
            yield segment, start / rate, np.ascontiguousarray(piece), rate

    def _record(self, item: SourceItem, shard: str, segment: int, start_s: float, offset: int, frames: int) -> dict:
        return {
            "id": f"{item.id}-{segment:03d}",
            "item": item.id,
            "song": item.song,
            "split": self.split[item.song],
            "file": item.file,
            "segment": segment,
            "start_s": round(start_s, 6),
            "caption": item.caption_for(segment),
            "shard": shard,
            "offset": offset,
            "frames": frames,
            "meta": item.meta,
        }


# (tokens (K, frames), latents (D, frames) float16 or None, clip records, failures) of one unit
_UnitOutput = tuple[np.ndarray, np.ndarray | None, list[dict], list[dict]]
_HALF_MAX = float(np.finfo(np.float16).max) / 16  # a residual beyond this is not what a codec's latents are


class _Skip(Exception):
    """An input that is readable but unusable; the message is the reason recorded."""


def _check_finite(wav: np.ndarray, where: str = "") -> None:
    """A _Skip for audio with NaN or infinite samples, which no codec can encode."""
    nan, inf = int(np.isnan(wav).sum()), int(np.isinf(wav).sum())
    if nan or inf:
        counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n)
        raise _Skip(f"non-finite samples{where} ({counts})")


def _dbfs(wav: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


# -- running units, in this process or in a pool -------------------------------------------------

_worker: dict[str, Any] = {}


def _run(job: _UnitJob, units: list[dict], workers: int, codec: Codec) -> Iterator[tuple[dict, tuple]]:
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            yield unit, job(codec, unit)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from zip(units, pool.map(_work, units), strict=True)


def _init_worker(job: _UnitJob) -> None:
    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism
    _worker["job"] = job
    _worker["codec"] = load_codec(job.config.codec, job.config.num_codebooks)


def _work(unit: dict) -> _UnitOutput:
    return _worker["job"](_worker["codec"], unit)
