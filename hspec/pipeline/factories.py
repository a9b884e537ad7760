"""Bring-your-own models and datasets: factories named by import path.

A config (or ``hspec train/spectrum --model-factory/--dataset-factory``) names a factory
as ``package.module:function``; :func:`resolve` imports it with :mod:`importlib`. The
contracts, checked on every call:

* a **dataset factory** ``make(split)`` takes ``"train"`` or ``"test"`` and returns
  ``(inputs, targets)``: two tensors with the same first dimension (the examples), the
  same every call (seed inside the factory). Targets are int64 class indices for
  ``loss: cross_entropy`` — one per example, shape (N,), for outputs (N, C), or one per
  token, shape (N, T) with ignore index -100, for outputs (N, T, V) — or floats shaped
  like the outputs for ``loss: mse``;
* a **model factory** ``make()`` takes no argument and returns a ``torch.nn.Module``
  mapping a batch of inputs to outputs the loss accepts; hspec seeds torch before the
  call (the initial weights follow ``seed``) and calls it again, with the same result
  shapes, to rebuild a trained model from its ``model.pt``.

Anything else — a malformed path, a module or attribute that does not import, a
factory that raises or returns the wrong thing — is one :class:`HspecError` naming the
path.
"""

import importlib
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hspec.errors import HspecError

PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve(path: str) -> Callable:
    """The callable named by ``package.module:function``, or one HspecError naming it."""
    if not isinstance(path, str) or not PATH.match(path):
        raise HspecError(
            f"factory {path!r}: not an import path of the form package.module:function"
        )
    module_name, attribute = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 -- any failure of a user's module ends the same way
        raise HspecError(f"factory {path!r}: cannot import {module_name!r} ({error!r})") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise HspecError(f"factory {path!r}: {module_name!r} has no callable {attribute!r}")
    return factory


def _call(path: str, *args):
    try:
        return resolve(path)(*args)
    except HspecError:
        raise
    except Exception as error:  # noqa: BLE001 -- a user's factory may raise anything
        raise HspecError(f"factory {path!r} failed: {error!r}") from error


def load_split(path: str, split: str) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of ``split`` from the dataset factory ``path``, checked."""
    returned = _call(path, split)
    if (
        not isinstance(returned, tuple)
        or len(returned) != 2
        or not all(isinstance(t, Tensor) for t in returned)
    ):
        raise HspecError(
            f"factory {path!r}: {split} split must be a tuple (inputs, targets) of tensors, "
            f"got {type(returned).__name__}"
        )
    inputs, targets = returned
    if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets) or not len(targets):
        raise HspecError(
            f"factory {path!r}: {split} split needs as many inputs as targets, at least one, "
            f"got shapes {tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    return inputs, targets


def create_model(path: str) -> nn.Module:
    """The network of the model factory ``path``, checked to be an ``nn.Module``."""
    model = _call(path)
    if not isinstance(model, nn.Module):
        raise HspecError(
            f"factory {path!r}: must return a torch.nn.Module, got {type(model).__name__}"
        )
    return model


def num_classes(targets: Tensor, loss: str) -> int:
    """C of a dataset for cross-entropy (its largest class index + 1, ignoring -100); 1 for
    mse (no classes): what the workflow deflates and records."""
    if loss != "cross_entropy":
        return 1
    counted = targets[targets != -100]
    if targets.dtype != torch.int64 or not len(counted) or int(counted.min()) < 0:
        raise HspecError(
            "cross_entropy needs int64 targets in [0, C) (or -100, ignored), "
            f"got {targets.dtype} targets"
        )
    return int(counted.max()) + 1
