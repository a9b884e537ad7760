"""Torch devices named on the command line: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...

:func:`resolve` turns a name into a ``torch.device`` that exists here, or one
:class:`~hspec.errors.HspecError` line saying why not.
"""

import torch

from hspec.errors import HspecError


def resolve(name: str) -> torch.device:
    """The torch device `name` names (auto: cuda if available, else cpu); one clear line if
    the name is invalid or no such device is available here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise HspecError(f"invalid --device {name!r}: {error}") from error
    count = device_count(device.type)
    if count == 0:
        raise HspecError(f"--device {name!r} but no {device.type} device is available")
    if device.index is not None and device.index >= count:
        raise HspecError(
            f"--device {name!r} but only {count} {device.type} device(s) are available"
        )
    return device


def device_count(kind: str) -> int:
    """How many devices of type `kind` (cuda, mps, xpu, ...) torch can use here; cpu: 1."""
    if kind == "cpu":
        return 1
    backend = getattr(torch, kind, None)
    if not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        return 0
    return backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
