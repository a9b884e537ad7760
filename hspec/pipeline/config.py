"""Checks of the workflow configuration that a JSON schema cannot express.

``hspec/config.schema.yaml`` (see :mod:`hspec.settings`) fixes keys, types, ranges and
defaults; :func:`check` then refuses what JSON schema lets through (30.0 for an integer,
an infinite or NaN number) and looks at the values together: every dataset a figure uses has a learning-rate grid
(Table 1), and no sample size per class exceeds the smallest class of that dataset's
train split; a figure's own network is named under ``models`` and its own datasets
(factories) take their whole train split (``per_class: [full]``). Each problem raises
one :class:`HspecError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping

from hspec.errors import HspecError
from hspec.pipeline.data import DATASETS, smallest_train_class
from hspec.pipeline.models import ARCHS
from hspec.settings import type_errors


def check(config: Mapping) -> None:
    """Raise an HspecError naming the first inconsistent key of a schema-valid config."""
    errors = type_errors(config)
    if errors:
        raise HspecError(f"config: {errors[0].removeprefix('config.')}")
    for fig, spec in config["figures"].items():
        if spec["arch"] not in ARCHS and spec["arch"] not in config.get("models", {}):
            raise HspecError(
                f"config: figures.{fig}.arch {spec['arch']!r} is neither one of "
                f"{', '.join(ARCHS)} nor a name under models (your own network's factory)"
            )
        for dataset in spec["datasets"]:
            if dataset not in config["datasets"]:
                raise HspecError(
                    f"config: figures.{fig} uses dataset {dataset!r}, which "
                    "has no entry under datasets (lrs, epochs)"
                )
            if dataset not in DATASETS:
                if spec["per_class"] != ["full"]:
                    raise HspecError(
                        f"config: figures.{fig}.per_class must be [full] for your own "
                        f"dataset {dataset!r} (its factory's whole train split)"
                    )
                continue
            largest = smallest_train_class(dataset)
            too_many = [n for n in spec["per_class"] if n != "full" and n > largest]
            if too_many:
                raise HspecError(
                    f"config: figures.{fig}.per_class {too_many} exceeds the "
                    f"{largest} examples of the smallest {dataset} train class"
                )
