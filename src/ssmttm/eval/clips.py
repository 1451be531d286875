"""The clips an evaluation reads: generated ones with their prompts, and reference sets with captions.

Generated clips are
- a folder of audio files, each with the JSON sidecar `ssmttm generate` writes beside it
  (`out.wav.json`, whose `prompt` is the caption), or
- a CSV with the columns `file` and `prompt` (paths relative to the CSV).

Reference sets are
- a folder of audio with a captions file, in the layouts `ssmttm data prepare` reads (JSON, JSONL
  or CSV with `file` and `caption`), our synthetic corpus (`metadata.jsonl`, whose attributes are
  kept as metadata) included;
- MusicCaps: its CSV (the columns read: `ytid`, `start_s`, `end_s`, `caption`) and a folder of the
  clips the user has, found by a file name pattern (default `{ytid}.wav`; `.flac` and `.mp3` of
  the same stem also count);
- the Song Describer Dataset: its CSV (the columns read: `caption_id`, `caption`, `path`, one row
  per caption; `path` is the track's file relative to the audio folder).

A clip that a CSV names but the folder lacks is listed in `missing` and skipped, not fatal.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmttm.data.sources import AUDIO_EXTENSIONS, SourceError, discover


class ClipsError(ValueError):
    """A set of clips that cannot be evaluated, with a one-line reason."""


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str  # the prompt of a generated clip, the caption of a reference clip
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. the synthetic corpus's attributes


def generated_clips(source: Path) -> list[Clip]:
    """The generated clips of a folder (audio with sidecars) or a CSV (`file`, `prompt`), sorted."""
    source = Path(source)
    if source.is_file():
        return _csv_clips(source, "prompt")
    if not source.is_dir():
        raise ClipsError(f"no folder or CSV of generated clips at {source}")
    clips = []
    for audio in sorted(p for p in source.iterdir() if _is_audio(p)):
        sidecar = audio.with_name(audio.name + ".json")
        if not sidecar.is_file():
            raise ClipsError(f"{audio} has no sidecar {sidecar.name}: its prompt is unknown (or pass a CSV)")
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ClipsError(f"{sidecar} is not valid JSON") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ClipsError(f"{sidecar} has no prompt")
        clips.append(Clip(audio, prompt.strip()))
    if not clips:
        raise ClipsError(f"no audio files in {source}")
    return clips


def reference_clips(
    source: Path,
    captions: Path | None = None,
    musiccaps: Path | None = None,
    song_describer: Path | None = None,
    pattern: str = "{ytid}.wav",
) -> tuple[list[Clip], list[str]]:
    """A reference set's clips and the files its captions name that are not there (skipped)."""
    source = Path(source)
    if not source.is_dir():
        raise ClipsError(f"no reference folder at {source}")
    if musiccaps is not None:
        clips, missing = _musiccaps(source, Path(musiccaps), pattern)
    elif song_describer is not None:
        clips, missing = _song_describer(source, Path(song_describer))
    else:
        try:
            items, failures = discover(source, captions)
        except SourceError as err:
            raise ClipsError(str(err)) from None
        clips = [Clip(source / item.file, item.caption, item.meta) for item in items]
        missing = [f"{f.file}: {f.reason}" for f in failures]
    if not clips:
        raise ClipsError(f"no reference clip with a caption found in {source}")
    return clips, missing


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ClipsError(f"no CSV at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise ClipsError(f"{path} has no column{'s' if len(absent) > 1 else ''} {', '.join(absent)}")
        return list(reader)


def _csv_clips(path: Path, text_column: str) -> list[Clip]:
    clips = []
    for row in _rows(path, ("file", text_column)):
        audio = path.parent / row["file"]
        if not audio.is_file():
            raise ClipsError(f"{path}: no audio file {row['file']}")
        if not row[text_column].strip():
            raise ClipsError(f"{path}: {row['file']} has no {text_column}")
        clips.append(Clip(audio, row[text_column].strip()))
    if not clips:
        raise ClipsError(f"{path} lists no clips")
    return clips


def _musiccaps(folder: Path, table: Path, pattern: str) -> tuple[list[Clip], list[str]]:
    clips, missing = [], []
    for row in _rows(table, ("ytid", "start_s", "end_s", "caption")):
        named = folder / pattern.format(**row)
        found = next((p for p in (named, named.with_suffix(".flac"), named.with_suffix(".mp3")) if p.is_file()), None)
        if found is None:
            missing.append(f"{named.name}: not in {folder}")
            continue
        meta = {"ytid": row["ytid"], "start_s": float(row["start_s"]), "end_s": float(row["end_s"])}
        clips.append(Clip(found, row["caption"].strip(), meta))
    return clips, missing


def _song_describer(folder: Path, table: Path) -> tuple[list[Clip], list[str]]:
    clips, missing = [], []
    for row in _rows(table, ("caption_id", "caption", "path")):
        audio = folder / row["path"]
        if not audio.is_file():
            missing.append(f"{row['path']}: not in {folder}")
            continue
        clips.append(Clip(audio, row["caption"].strip(), {"caption_id": row["caption_id"]}))
    return clips, missing
