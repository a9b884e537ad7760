"""One writer per output: an exclusive advisory lock next to every result an hspec command writes.

Snakemake locks a working directory, not the results: two clones of the project pointing at
one absolute results folder could otherwise write one run directory at once, and one's
removal of partial writes would delete the other's temporary files. `hold(path)` takes an
exclusive `fcntl.flock` on `.NAME.lock` in the parent directory of `path` without waiting:
while one process holds it, every other `hold` of that path fails with one `HspecError`
naming the path and the holder's pid. The kernel drops the lock when the holder exits by
any means (kill -9 included), so a lock is never stale: a killed holder's lock file stays
behind but is free; a released one is removed.
Within one process `hold` is re-entrant, so a library function may lock what its caller
already locked. Advisory: it excludes other `hold`s, not other programs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from hspec.errors import HspecError

_held: dict[Path, int] = {}  # lock file -> nesting depth in this process


def lock_file(path: str | os.PathLike[str], tag: str = "") -> Path:
    """The lock file of `path`: `.NAME{tag}.lock` in its parent directory, symbolic links and
    `..` resolved first (every spelling of one output shares one lock)."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}{tag}.lock"


@contextlib.contextmanager
def hold(path: str | os.PathLike[str], tag: str = "") -> Iterator[None]:
    """Hold the exclusive lock of `path` (see `lock_file`) for the duration of the block.

    Raises `HspecError` at once if another process holds it. The lock file is removed on
    release (while still locked; a process that opened it meanwhile sees it is gone and
    retries), so only a killed holder leaves one, and that one is free.
    """
    lock = lock_file(path, tag)
    if lock in _held:
        _held[lock] += 1
        try:
            yield
        finally:
            _held[lock] -= 1
        return
    fd = _acquire(lock, path)
    _held[lock] = 1
    try:
        yield
    finally:
        del _held[lock]
        lock.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock: Path, path: str | os.PathLike[str]) -> int:
    """A descriptor of `lock`, exclusively flocked, holding this process's pid."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise HspecError(
                f"{path}: cannot create its directory or its lock file {lock.name} ({error})"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise HspecError(
                f"{str(path)!r} is being written by another process (pid {holder}); "
                f"wait for it to finish or stop it, then rerun"
            ) from None
        if _same_file(fd, lock):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)  # its holder released and removed it between our open and flock: try again


def _same_file(fd: int, path: Path) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ('unknown' while it has not yet)."""
    content = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return content or "unknown"
