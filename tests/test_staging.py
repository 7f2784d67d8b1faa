"""staged(): a directory gets all of the staged files, or, after an error, none of them."""

from __future__ import annotations

import os

import pytest

from futurefill import staging
from futurefill.staging import staged


def test_the_files_move_in_the_manifest_last(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old")
    moved = []
    replace = os.replace
    monkeypatch.setattr(staging.os, "replace", lambda s, d: (moved.append(d.name), replace(s, d)))
    with staged(tmp_path, last=("manifest.json",)) as directory:
        for name in ("manifest.json", "b.bin", "a.txt"):
            (directory / name).write_text(f"new {name}")
    assert moved == ["a.txt", "b.bin", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == moved  # no staging directory left
    assert (tmp_path / "a.txt").read_text() == "new a.txt"


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_error_leaves_the_directory_as_it_was(tmp_path, error):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(type(error)), staged(tmp_path / ".") as directory:
        (directory / "a.txt").write_text("new")
        (directory / "b.txt").write_text("new")
        raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_a_missing_directory_is_created(tmp_path):
    with staged(tmp_path / "x" / "y") as directory:
        (directory / "f").write_text("1")
    assert (tmp_path / "x" / "y" / "f").read_text() == "1"
