"""Which code made a result: the package version, and the git commit when ssmttm runs from a clone.

A report that names only "0.1.0" cannot tell two checkouts of one release apart; the commit can. An
installed wheel has no repository, and then the commit is None, not a guess.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# The package's own version (pyproject.toml's), here rather than in __init__ so that a leaf can
# read it without importing the package, whose lazy attributes reach the whole library.
SOURCE_VERSION = "0.1.0"
_SOURCE = Path(__file__).resolve().parent


def version() -> str:
    """The installed distribution's version; SOURCE_VERSION for a source tree never installed."""
    try:
        return metadata.version("ssmttm")
    except metadata.PackageNotFoundError:
        return SOURCE_VERSION


def git_commit(folder: Path = _SOURCE) -> str | None:
    """The commit checked out where `folder` lies, with "-dirty" if tracked files differ from it;
    None outside a git work tree or without git."""
    try:
        head = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def code_version() -> dict[str, str | None]:
    """{"ssmttm_version": ..., "git_commit": ...}: what a report records of the code behind it."""
    return {"ssmttm_version": version(), "git_commit": git_commit()}


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()
