"""Atomic writes: an interrupted write leaves the old file intact and no temporary file behind."""
import os

import pytest

from minibert.files import atomic_open, atomic_write_text


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_interrupted_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "w") as f:
            f.write("half of the new cont")
            raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
