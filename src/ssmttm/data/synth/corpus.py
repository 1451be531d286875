"""The synthetic corpus on disk: `out_dir/audio/<id>.flac`, one JSON record per piece in
`out_dir/records/`, and `out_dir/metadata.jsonl` with every record in index order.

Every piece's randomness comes from (seed, index) alone, through its own `SeedSequence`, so the
corpus is the same whatever the worker count and whichever pieces an earlier run already made.
A piece is finished once its record is written (after its audio, both atomically), which is what
lets a re-run skip it; `metadata.jsonl` is assembled at the end, also atomically.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ssmttm.audio import AudioError, audio_info, save_audio
from ssmttm.data.synth.attributes import HoldOut, PieceAttributes, check_drawable, draw_attributes
from ssmttm.data.synth.captions import make_caption
from ssmttm.data.synth.compose import compose
from ssmttm.data.synth.render import level, render_score, require_renderer, soundfont_path
from ssmttm.data.synth.vocabulary import LOUDNESS_DBFS
from ssmttm.files import write_text

logger = logging.getLogger(__name__)

# MusicCaps clips, the captions these models are evaluated on, are 10 s long; longer pieces would
# only repeat their four-bar phrases, and 10 s keeps a 10,000-piece corpus near 28 hours of audio.
DEFAULT_DURATION_S = 10.0
DEFAULT_SAMPLE_RATE = 44_100


@dataclass(frozen=True)
class CorpusSettings:
    """What decides the pieces' content: the same settings give the same corpus, byte for byte."""

    seed: int
    duration_s: float = DEFAULT_DURATION_S
    sample_rate: int = DEFAULT_SAMPLE_RATE
    hold_out: HoldOut | None = None
    only_held_out: bool = False
    # Share of the captions that do not already give a BPM which are made to: a model learns a
    # tempo from numbers it reads often (captions.py). 0 keeps every caption as it always was.
    bpm_captions: float = 0.0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0 < self.duration_s <= 600:
            raise ValueError(f"duration must be in (0, 600] seconds, got {self.duration_s}")
        if not 8_000 <= self.sample_rate <= 192_000:
            raise ValueError(f"sample rate must be between 8000 and 192000 Hz, got {self.sample_rate}")
        if self.only_held_out and self.hold_out is None:
            raise ValueError("only_held_out needs a hold-out spec")
        if not 0.0 <= self.bpm_captions <= 1.0:
            raise ValueError(f"the share of captions stating a BPM must be in [0, 1], got {self.bpm_captions}")
        check_drawable(self.hold_out, self.only_held_out)


@dataclass(frozen=True)
class CorpusSummary:
    """What a run made: counts, audio length, time taken and where the metadata is."""

    out_dir: Path
    metadata_path: Path
    pieces: int
    rendered: int
    skipped: int
    audio_seconds: float  # the whole corpus
    rendered_seconds: float  # made by this run
    wall_seconds: float
    styles: dict[str, int] = field(default_factory=dict)

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio this run made per second of wall time."""
        return self.rendered_seconds / max(self.wall_seconds, 1e-9)


def piece_id(seed: int, index: int) -> str:
    """Unique within a corpus (the index) and across seeds: "synth-7-000042"."""
    return f"synth-{seed}-{index:06d}"


def piece_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for a piece's attributes, music and caption, from (seed, index) only.

    Separate streams keep each stage's draws from shifting the others: the same attributes always
    get the same music, whichever caption was written for them.
    """
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(3)
    attributes, music, caption = (np.random.default_rng(child) for child in children)
    return attributes, music, caption


def piece_record(settings: CorpusSettings, index: int) -> tuple[PieceAttributes, dict[str, Any]]:
    """The piece's attributes and its metadata record, without composing or rendering it."""
    attr_rng, _, caption_rng = piece_rngs(settings.seed, index)
    attrs = draw_attributes(attr_rng, settings.hold_out, settings.only_held_out)
    ident = piece_id(settings.seed, index)
    fields = asdict(attrs)
    fields["accompaniment"] = list(attrs.accompaniment)
    record = {
        "id": ident,
        "index": index,
        "seed": settings.seed,
        "file": f"audio/{ident}.flac",
        "caption": make_caption(attrs, caption_rng, settings.bpm_captions),
        "duration_s": settings.duration_s,
        "sample_rate": settings.sample_rate,
        **fields,
        "time_signature": "4/4",
        "held_out": settings.hold_out is not None and settings.hold_out.matches(attrs),
        "soundfont": soundfont_path().name,
    }
    return attrs, record


def render_piece(attrs: PieceAttributes, settings: CorpusSettings, index: int) -> np.ndarray:
    """Compose and render one piece -> (N,) float32 at the corpus sample rate, levelled."""
    _, music_rng, _ = piece_rngs(settings.seed, index)
    score = compose(attrs, music_rng, settings.duration_s)
    audio = render_score(score, settings.sample_rate, settings.duration_s)
    return level(audio, LOUDNESS_DBFS[attrs.dynamics], settings.sample_rate)


def _finished(out_dir: Path, record: dict[str, Any]) -> bool:
    """True when an earlier run left this exact record and a complete audio file of the right shape."""
    record_path = out_dir / "records" / f"{record['id']}.json"
    try:
        if json.loads(record_path.read_text()) != record:
            return False
        duration, rate, channels = audio_info(out_dir / record["file"])
    except (OSError, ValueError, AudioError):
        return False
    expected = round(record["duration_s"] * record["sample_rate"])
    return rate == record["sample_rate"] and channels == 1 and round(duration * rate) == expected


def make_piece(settings: CorpusSettings, out_dir: Path, index: int) -> tuple[dict[str, Any], bool]:
    """Write piece `index` unless it is already on disk -> (its record, whether it was rendered)."""
    attrs, record = piece_record(settings, index)
    if _finished(out_dir, record):
        return record, False
    audio = render_piece(attrs, settings, index)
    save_audio(out_dir / record["file"], audio, settings.sample_rate)
    write_text(out_dir / "records" / f"{record['id']}.json", json.dumps(record, ensure_ascii=False))
    return record, True


def synthesize_corpus(
    out_dir: str | Path,
    n: int,
    seed: int,
    workers: int = 1,
    hold_out: str | HoldOut | None = None,
    only_held_out: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    duration_s: float = DEFAULT_DURATION_S,
    progress: bool = False,
    bpm_captions: float = 0.0,
) -> CorpusSummary:
    """Make pieces 0..n-1 of the corpus for `seed` in `out_dir`, skipping those already made.

    `hold_out` ("style=jazz,lead=saxophone;...") leaves those combinations out, or with
    `only_held_out` makes nothing else. `workers` > 1 renders in that many spawned processes
    (so a script that calls this needs the `if __name__ == "__main__":` guard); the output is
    identical for any worker count. `bpm_captions` makes that share of the captions that name no
    BPM state one too; the audio stays the same whatever it is.
    """
    if n < 0 or workers < 1:
        raise ValueError(f"need n >= 0 and workers >= 1, got n={n}, workers={workers}")
    spec = HoldOut.parse(hold_out) if isinstance(hold_out, str) else hold_out
    settings = CorpusSettings(seed, float(duration_s), sample_rate, spec, only_held_out, float(bpm_captions))
    require_renderer()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    start = time.perf_counter()
    work = partial(make_piece, settings, out)
    records: list[dict[str, Any]] = []
    rendered = 0
    with ExitStack() as stack:
        if workers == 1 or n <= 1:
            results: Iterator[tuple[dict[str, Any], bool]] = map(work, range(n))
        else:
            context = multiprocessing.get_context("spawn")  # safe beside threads (torch) and on every OS
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
            results = pool.map(work, range(n), chunksize=max(1, min(8, n // (4 * workers))))
        for record, made in tqdm(results, total=n, desc="synth", unit="piece", disable=not progress):
            records.append(record)
            rendered += made
    metadata = out / "metadata.jsonl"
    write_text(metadata, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary = CorpusSummary(
        out_dir=out,
        metadata_path=metadata,
        pieces=n,
        rendered=rendered,
        skipped=n - rendered,
        audio_seconds=n * settings.duration_s,
        rendered_seconds=rendered * settings.duration_s,
        wall_seconds=time.perf_counter() - start,
        styles=dict(sorted(Counter(r["style"] for r in records).items())),
    )
    logger.debug("synth: %d pieces in %s (%d rendered, %d already there)", n, out, rendered, n - rendered)
    return summary
