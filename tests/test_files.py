"""Atomic writes: the whole file or the old one, with the mode a new file gets."""
import os
import stat

import numpy as np
import pytest

from tyrjax.files import new_file_mode, write_atomic, write_json, write_npy_atomic


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_mode_open_gives_a_new_file(tmp_path, umask):
    open(tmp_path / "by_open", "w").close()
    expected = mode(tmp_path / "by_open")
    assert new_file_mode() == expected == 0o666 & ~umask
    assert mode(write_atomic(tmp_path / "a.txt", "text")) == expected
    assert mode(write_json(tmp_path / "b.json", {"x": 1})) == expected
    assert mode(write_npy_atomic(tmp_path / "c.npy", np.arange(3))) == expected


def test_a_rewrite_replaces_the_content(tmp_path):
    path = write_atomic(tmp_path / "a.txt", "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
