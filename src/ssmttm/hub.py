"""The Hugging Face Hub from a machine that may not reach it: what codecs, text encoders and
exported models all need to tell a hub id from a local path, fail fast and say how to bring a
model here."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def is_local_path(source: str | Path) -> bool:
    """Whether `source` names a local file or folder: one that exists, or a string written as a path
    (starting with ".", "/" or "~"), which is never taken for a hub id, even while it is missing."""
    text = str(source)
    return text.startswith((".", "/", "~")) or Path(text).expanduser().exists()


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` names a model on the Hugging Face Hub: "owner/name", and not a local path.
    What is neither (a short name, a typo) is for the caller to resolve or refuse."""
    return not is_local_path(source) and HUB_ID.fullmatch(str(source)) is not None


def offline() -> bool:
    """HF_HUB_OFFLINE, read when asked rather than when huggingface_hub was imported."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_config(hub_id: str) -> str | None:
    """The path of `hub_id`'s cached config.json, or None when the cache does not hold it."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return found if isinstance(found, str) else None


def how_to_provide(hub_id: str) -> str:
    """One sentence on getting a model onto a machine that cannot reach the hub."""
    return f"on a machine with internet run `hf download {hub_id} --local-dir DIR`, copy DIR here and pass DIR"


def first_line(err: BaseException, limit: int = 160) -> str:
    """An exception's first line, for one-line errors (transformers' messages run to paragraphs)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' per-tensor "Loading weights" bar off while a frozen part loads: it is noise
    in a command's output, and it would split our one-line errors over several lines."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
