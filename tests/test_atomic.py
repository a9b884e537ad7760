"""Atomic writes: complete or absent, a failure one line naming the path, nothing left."""

import errno
import json

import numpy as np
import pytest

from hspec.atomic import atomic_write, jsonable, write_json
from hspec.errors import HspecError


def failing(error):
    def write(file):
        file.write(b"partial")
        raise error

    return write


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    ],
)
def test_a_failed_write_is_one_line_and_leaves_the_old_file(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(HspecError, match=r"model\.pt: cannot write the model \(") as caught:
        atomic_write(path, failing(error), "model")
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_parent_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HspecError, match="file/out.json: cannot write the file"):
        atomic_write(tmp_path / "file" / "out.json", lambda f: f.write(b"{}"))


def test_other_exceptions_pass_through_and_clean_up(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x", failing(KeyboardInterrupt()))
    assert list(tmp_path.iterdir()) == []


def test_write_json_writes_plain_json(tmp_path):
    path = write_json(tmp_path / "n.json", {"a": np.float32(0.5), 1: np.arange(2), "b": np.nan})
    assert json.loads(path.read_text()) == {"1": [0, 1], "a": 0.5, "b": None}
    assert jsonable((np.bool_(True), np.int64(3))) == [True, 3]


def test_a_written_file_has_the_permissions_of_an_ordinary_file(tmp_path):
    """Not the 0600 of a temporary file: a results folder is shared."""
    import os

    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
