"""Atomic writes: a failed write leaves the old file and no litter; a staged file replaces its target."""

import pytest

from ssmttm.files import atomic_write, read_text, replace_durably, staging_path, write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "notes.txt"
    write_text(path, "old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert read_text(path) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_staged_file_is_hidden_beside_its_target_and_replaces_it(tmp_path):
    path = tmp_path / "out.flac"
    path.write_bytes(b"old")
    staged = staging_path(path)
    assert staged.parent == tmp_path and staged.name.startswith(".")  # folder scans skip it
    staged.write_bytes(b"new")
    replace_durably(staged, path)
    assert path.read_bytes() == b"new" and not staged.exists()
