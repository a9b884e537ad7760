"""Where a number came from: the code, the software and the machine that computed it.

:func:`environment` describes the running process: hspec's version and git commit (with
a dirty flag) when hspec is imported from a git checkout, the versions of Python, torch,
numpy and zarr, the device, the host. It never fails: what cannot be found is ``None``.
"""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from hspec.version import __version__

PACKAGE = Path(__file__).resolve().parents[1]


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second (e.g. 2026-12-01T12:00:00+00:00)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout hspec is imported from, or (None, None) when the
    package is not the ``hspec`` folder of a git work tree (e.g. an installed wheel, even
    inside some other repository). Dirty: a tracked file differs from the commit."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or (Path(top) / "hspec").resolve() != PACKAGE:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a CUDA device, else the device type in capitals
    (``CPU``) followed by the processor's name where the platform reports one."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    processor = platform.processor()
    return f"{device.type.upper()} ({processor})" if processor else device.type.upper()


def environment(device: torch.device) -> dict:
    """The code, software and machine of this process (see the module docstring)."""
    commit, dirty = git_state()
    return {
        "hspec_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "zarr": _version("zarr"),
        "device": device_name(device),
        "host": socket.gethostname(),
    }
