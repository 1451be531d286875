"""Collections to prepare: what audio there is, its captions and its songs.

Three layouts, all read into the same `SourceItem`s:
- a folder of audio files with captions in JSON, JSONL or CSV (columns `file`, `caption`); extra
  fields of a JSONL record (our synthetic corpus's attributes) are kept as metadata;
- the MTG-Jamendo layout: `raw_30s_cleantags.tsv` with audio at `NN/ID.mp3`, and the release's
  metadata JSON (id -> `path`, `rephrased_caption`) for captions;
- our synthetic corpus: a folder with `metadata.jsonl`, which is the first layout.

Every problem that can be seen without reading audio (no caption, an empty or non-UTF-8 one, a
caption for a file that is not there) becomes a `Failure` here; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif", ".opus"}
JAMENDO_TSV = "raw_30s_cleantags.tsv"


class SourceError(ValueError):
    """A source or caption file that cannot be used at all (as opposed to one bad item in it)."""


@dataclass(frozen=True)
class Failure:
    file: str  # relative to the source folder
    reason: str


@dataclass
class SourceItem:
    id: str  # unique and stable: derived from the relative path
    song: str  # the unit of the train/validation split
    file: str  # relative to the source folder
    caption: str
    # Captions per segment index, where the collection has them (the release's metadata can).
    segment_captions: dict[int, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def caption_for(self, segment: int) -> str:
        return self.segment_captions.get(segment, self.caption)


def item_id(relative: str) -> str:
    """A file-system- and shell-safe id that stays unique for any file name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(relative).with_suffix("").as_posix()).strip("._-") or "item"
    return f"{stem[:80]}-{hashlib.sha1(relative.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def discover(source: Path, captions: Path | None) -> tuple[list[SourceItem], list[Failure]]:
    """All items of a collection, sorted by id, and the failures seen without reading audio."""
    if not source.is_dir():
        raise SourceError(f"source folder not found: {source}")
    if (source / JAMENDO_TSV).is_file():
        if captions is None:
            raise SourceError(f"a Jamendo layout needs --captions (the release's metadata JSON) beside {JAMENDO_TSV}")
        items, failures = _jamendo(source, captions)
    else:
        if captions is None:
            captions = source / "metadata.jsonl"  # our synthetic corpus
            if not captions.is_file():
                raise SourceError(f"no --captions given and no metadata.jsonl in {source}")
        items, failures = _folder(source, captions)
    items.sort(key=lambda item: item.id)
    failures.sort(key=lambda failure: failure.file)
    return items, failures


# -- a folder with a captions file --------------------------------------------------------------


def _folder(source: Path, captions: Path) -> tuple[list[SourceItem], list[Failure]]:
    records, failures = _read_caption_records(captions)
    audio = {
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")  # hidden: temporary files
    }
    items: list[SourceItem] = []
    seen: set[str] = set()
    for record in records:
        file = record.pop("file")
        if file in seen:
            failures.append(Failure(file, "listed twice in the captions file"))
            continue
        seen.add(file)
        if file not in audio:
            failures.append(Failure(file, "file not found" if not (source / file).exists() else "not an audio file"))
            continue
        caption, problem = _clean_caption(record.pop("caption", None))
        if problem:
            failures.append(Failure(file, problem))
            continue
        song = str(record.get("song") or record.get("id") or Path(file).stem)
        items.append(SourceItem(item_id(file), song, file, caption, meta=record))
    failures.extend(Failure(file, "no caption") for file in sorted(audio - seen))
    return items, failures


def _read_caption_records(path: Path) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Caption records {file, caption, ...} from JSON, JSONL or CSV, and per-record failures."""
    if not path.is_file():
        raise SourceError(f"captions file not found: {path}")
    # surrogateescape keeps invalid bytes, so one bad caption fails alone (see _clean_caption)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(text, path)
    if suffix == ".json":
        return _json_records(text, path), []
    if suffix in (".csv", ".tsv"):
        return _csv_records(text, path, delimiter="\t" if suffix == ".tsv" else ","), []
    raise SourceError(f"{path.name}: captions must be .json, .jsonl or .csv")


def _jsonl_records(text: str, path: Path) -> tuple[list[dict[str, Any]], list[Failure]]:
    records, failures = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            failures.append(Failure(f"{path.name}:{number}", "caption record is not valid JSON"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            failures.append(Failure(f"{path.name}:{number}", "caption record has no 'file'"))
            continue
        records.append(record)
    return records, failures


def _json_records(text: str, path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(f"{path.name}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):  # {file: caption}
        return [{"file": file, "caption": caption} for file, caption in data.items()]
    if isinstance(data, list) and all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in data):
        return [dict(r) for r in data]
    raise SourceError(f"{path.name}: expected {{file: caption}} or a list of {{file, caption}} records")


def _csv_records(text: str, path: Path, delimiter: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
        raise SourceError(f"{path.name}: needs a header with columns 'file' and 'caption'")
    return [dict(row) for row in reader if row.get("file")]


def _clean_caption(caption: Any) -> tuple[str, str | None]:
    if caption is None:
        return "", "no caption"
    if not isinstance(caption, str):
        return "", "caption is not text"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        return "", "caption is not valid UTF-8"
    caption = " ".join(caption.split())
    return caption, None if caption else "empty caption"


# -- MTG-Jamendo --------------------------------------------------------------------------------


def _jamendo(source: Path, captions: Path) -> tuple[list[SourceItem], list[Failure]]:
    tracks = _jamendo_tracks(source / JAMENDO_TSV)
    by_key, by_path = _release_metadata(captions)
    items, failures = [], []
    for track_id, relative, tags in tracks:
        if not (source / relative).is_file():
            failures.append(Failure(relative, "file not found"))
            continue
        number = track_id.removeprefix("track_").lstrip("0") or "0"
        entry = by_key.get(track_id) or by_key.get(number) or by_path.get(relative)
        segments = _segment_captions(by_path, relative)
        if entry is None and not segments:
            failures.append(Failure(relative, "no caption"))
            continue
        caption, problem = _clean_caption(entry.get("rephrased_caption") if entry else next(iter(segments.values())))
        if problem:
            failures.append(Failure(relative, problem))
            continue
        meta = {"track_id": track_id, "tags": tags}
        items.append(SourceItem(item_id(relative), track_id, relative, caption, segments, meta))
    return items, failures


def _jamendo_tracks(tsv: Path) -> list[tuple[str, str, list[str]]]:
    lines = tsv.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].startswith("TRACK_ID"):
        raise SourceError(f"{tsv.name}: expected the MTG-Jamendo header (TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, ...)")
    header = lines[0].split("\t")
    path_column = header.index("PATH")
    tracks = []
    for line in lines[1:]:
        columns = line.split("\t")
        if len(columns) > path_column:
            tracks.append((columns[0], columns[path_column], columns[path_column + 2 :]))
    return tracks


def _release_metadata(path: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """The release's metadata JSON, indexed by its keys and by its `path` values."""
    records = _json_object(path)
    by_path = {str(r["path"]): r for r in records.values() if isinstance(r, dict) and "path" in r}
    return records, by_path


def _segment_captions(by_path: dict[str, dict], relative: str) -> dict[int, str]:
    """Per-segment captions, where the metadata lists segments as NN/ID/segment_K.mp3."""
    prefix = Path(relative).with_suffix("").as_posix() + "/segment_"
    found = {}
    for path, record in by_path.items():
        if path.startswith(prefix) and isinstance(record.get("rephrased_caption"), str):
            index = Path(path).stem.removeprefix("segment_")
            if index.isdigit():
                found[int(index)] = " ".join(record["rephrased_caption"].split())
    return {k: v for k, v in found.items() if v}


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SourceError(f"captions file not found: {path}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path.name}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path.name}: expected an object of id -> {{path, rephrased_caption}}")
    return data
