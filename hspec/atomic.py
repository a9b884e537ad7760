"""Atomic writes: a result is either complete at its path or absent, never half-written.

Files and directories are written under a temporary name in the same directory and moved
into place with ``os.replace`` (atomic on POSIX within one file system). JSON is written
through :func:`write_json`, after :func:`jsonable` turns numpy values into plain ones.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from hspec.errors import HspecError


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any], what: str = "file") -> None:
    """Write ``path`` by calling ``write`` on a temporary file in the same directory, then
    ``os.replace``. A failure to write (a missing or unwritable directory, a full disk;
    torch's writer reports these as RuntimeError) is one HspecError naming ``path`` and
    the ``what``, and leaves neither ``path`` changed nor a temporary file behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        )
    except OSError as error:
        raise _write_error(path, what, error) from error
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # a temporary file is 0600; a result is not
        os.replace(handle.name, path)
    except (OSError, RuntimeError) as error:
        Path(handle.name).unlink(missing_ok=True)
        raise _write_error(path, what, error) from error
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(path: Path, what: str, error: BaseException) -> HspecError:
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    return HspecError(f"{path}: cannot write the {what} ({reason})")


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it replaces ``path``
    (an older ``path`` is moved aside first and deleted after); on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def jsonable(value):
    """``value`` in plain JSON types: numpy scalars and arrays as Python numbers and
    lists, mapping keys as strings, non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: Path, obj: Any) -> Path:
    """Write ``jsonable(obj)`` as indented JSON with sorted keys, atomically."""
    path = Path(path)
    text = json.dumps(jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda file: file.write(text.encode()))
    return path
