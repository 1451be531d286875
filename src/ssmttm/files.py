"""Files written atomically: a temporary file beside the target, flushed to disk, then a rename.

A reader (or a run killed mid-write and started again) sees the old file or the new one, never a
half-written one. Temporary files are hidden (a leading dot), so folder scans skip them.
`atomic_write` does it all for a file written through a callback; a file that another
library writes to a path of its own is written to `staging_path`, then goes through `replace_durably`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(binary file) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; the result should not be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_path(path: str | Path) -> Path:
    """The hidden name beside `path` under which a file is written before `replace_durably` renames
    it over `path`: out.flac -> .out.flac.tmp. Fixed rather than random, so that the processes of
    a distributed run agree on it and a run started again overwrites what a killed one left."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Rename a file written under another name over `path`, its bytes on disk first: the last step
    of a file that could not go through `atomic_write`, such as one readable while it grows."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    # surrogateescape: file names that are not valid UTF-8 round-trip through our JSON
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records))


def read_text(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8", errors="surrogateescape")


def read_json(path: str | Path) -> Any:
    return json.loads(read_text(path))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_text(path).splitlines() if line]


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
