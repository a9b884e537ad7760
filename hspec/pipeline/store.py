"""Results as Zarr (format 3) groups, written atomically.

A *spectrum* group holds the arrays ``grid``, ``density``, ``outliers``, ``nodes``,
``weights`` (and ``moments`` for KPM), the run index of each node ``runs``, per
outlier its true residual ``residuals``, ``error_bounds`` and ``converged``, and the
Lanczos runs' ghosts ``ghosts``, ``ghost_runs`` and convergence numbers
``convergence_l1``, ``convergence_w1`` (groups written before these existed lack them and
still read), with attributes describing what
was measured (component, split, dataset, arch, n_per_class, n_params, n_samples,
lambda_min, lambda_max, hvp_count, seconds, the settings, the hspec version, and the
result's ``provenance``). A *history* group holds per-epoch training curves.

Every group is written into a temporary sibling directory and renamed into place, and its
attributes carry ``complete: true`` last, so a killed job never leaves a group that looks
complete. The attributes also hold a sha256 of every array (its dtype, shape and bytes).
A writer replaces only what hspec wrote: an empty directory or a group of the same kind
(complete or not); any other file or directory at the path is refused, and a failed write
(disk full, no permission) is one error naming the path.

Readers check the kind, that flag, that every array is present and matches its checksum
(a deleted chunk file reads back as fill values, an array rewritten in place changes its
bytes: both are caught), that every value is finite and, for a history, that all its
arrays have one length; any failure is one error naming the path and the array. Groups
written before checksums existed have none and are accepted when they pass every other
check (a deleted chunk in such a group cannot be told from stored values).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr

from hspec.atomic import atomic_directory, jsonable
from hspec.errors import HspecError
from hspec.numerics.normalization import Normalization
from hspec.numerics.spectrum import SpectralDensity
from hspec.version import __version__

SPECTRUM_ARRAYS = ("grid", "density", "outliers", "nodes", "weights")
# arrays of a spectrum group that older groups lack
SPECTRUM_OPTIONAL = (
    "runs",
    "residuals",
    "error_bounds",
    "converged",
    "ghosts",
    "ghost_runs",
    "convergence_l1",
    "convergence_w1",
)
SPECTRUM_ATTRS = (
    "component",
    "split",
    "dataset",
    "arch",
    "n_per_class",
    "n_params",
    "n_samples",
    "lambda_min",
    "lambda_max",
    "hvp_count",
    "seconds",
    "settings",
    "hspec_version",
)
#: the class-structure attribution (hspec.curvature.attribution) of a G or H spectrum:
#: its arrays ``attribution_values_<part>``, ``attribution_errors_<part>`` and
#: ``attribution_outliers``; its numbers in ``attrs["attribution"]`` (groups without it read)
ATTRIBUTION_PARTS = ("class_g0", "class_g1", "class_g2", "class_g1_g2", "class_g0_g1_g2")
ATTRIBUTION_MATCHED = ("class_g1", "class_g0_g1_g2")
ATTRIBUTION_ARRAYS = (
    tuple(f"attribution_values_{part}" for part in ATTRIBUTION_PARTS)
    + tuple(f"attribution_errors_{part}" for part in ATTRIBUTION_MATCHED)
    + ("attribution_outliers",)
)
HISTORY_ARRAYS = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def checksum(values: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order), as ``"sha256:<hex>"``."""
    values = np.ascontiguousarray(values)
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _kind(path: Path):
    """The ``kind`` attribute of the Zarr group at ``path``, or None if it is none."""
    try:
        return json.loads((path / "zarr.json").read_text())["attributes"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_overwritable(path: Path, kind: str) -> None:
    """Refuse (HspecError) unless ``path`` is absent, an empty directory or a ``kind``
    group written by hspec: nothing else is ever replaced."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and (_kind(path) == kind or not any(path.iterdir())):
        return
    what = "a directory" if path.is_dir() else "a file"
    raise HspecError(
        f"{path}: exists and is {what}, not a {kind} group written by hspec; "
        "refusing to overwrite it (move it or choose another path)"
    )


def write_group(path: Path, kind: str, arrays: Mapping[str, np.ndarray], attrs: Mapping) -> None:
    """Write a Zarr v3 group of 1-D float arrays and JSON attributes (with a checksum
    of every array), atomically, replacing only what :func:`check_overwritable` allows;
    a failed write is one HspecError naming ``path`` and leaves no temporary directory."""
    path = Path(path)
    check_overwritable(path, kind)
    try:
        with atomic_directory(path) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            checksums = {}
            for name, values in arrays.items():
                group.create_array(name, data=np.asarray(values))
                checksums[name] = checksum(np.asarray(values))
            group.attrs.update(jsonable({**attrs, "kind": kind, "checksums": checksums}))
            group.attrs["complete"] = True
    except OSError as error:
        reason = str(error) or type(error).__name__
        raise HspecError(f"{path}: cannot write the {kind} group ({reason})") from error


def read_group(
    path: Path, kind: str, arrays: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict]:
    """The named arrays (and those of ``optional`` that the group has) and the attributes
    (without the checksums) of a group written by :func:`write_group`, after the checks of
    the module docstring."""
    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
        if attrs.get("kind") != kind or attrs.get("complete") is not True:
            raise ValueError(f"not a complete {kind} group")
        present = set(group.array_keys())
        names = list(arrays) + [name for name in optional if name in present]
        data = {name: np.asarray(group[name][:]) for name in names}
    except Exception as error:  # any failure here means a truncated or foreign group
        raise HspecError(
            f"{path}: not a readable {kind} result ({error}); delete it and "
            "rerun the step that writes it"
        ) from error
    checksums = attrs.pop("checksums", None)
    for name, values in data.items():
        _check_array(path, kind, name, values, checksums)
    return data, attrs


def _check_array(
    path: Path, kind: str, name: str, values: np.ndarray, checksums: Mapping | None
) -> None:
    if checksums is not None and checksums.get(name) != checksum(values):
        raise HspecError(
            f"{path}: not a readable {kind} result (array {name!r} does not "
            "match its checksum: missing chunk or changed data); delete it and "
            "rerun the step that writes it"
        )
    if not np.isfinite(values).all():
        raise HspecError(f"{path}: array {name!r} of this {kind} holds NaN or Inf")


def attribution_arrays(attribution: Mapping) -> tuple[dict, dict]:
    """(arrays, numbers) of a :func:`hspec.curvature.attribution.class_attribution` dict, as
    a spectrum group stores them (:data:`ATTRIBUTION_ARRAYS`, ``attrs["attribution"]``)."""
    arrays = {
        f"attribution_values_{part}": attribution["values"][part] for part in ATTRIBUTION_PARTS
    }
    for part in ATTRIBUTION_MATCHED:
        arrays[f"attribution_errors_{part}"] = attribution["relative_errors"][part]
    arrays["attribution_outliers"] = attribution["outliers"]
    skip = ("values", "relative_errors", "outliers")
    return arrays, {key: value for key, value in attribution.items() if key not in skip}


def write_spectrum(path: Path, result, attrs: Mapping, attribution: Mapping | None = None) -> None:
    """Store a :class:`hspec.SpectralDensity` with the attributes describing it (an
    ``attrs["provenance"]`` dict is merged into the result's provenance; the outliers'
    vectors are not stored) and, if given, its class-structure ``attribution``
    (:func:`attribution_arrays`)."""
    arrays = {name: getattr(result, name) for name in SPECTRUM_ARRAYS + SPECTRUM_OPTIONAL}
    arrays["moments"] = result.moments
    if attribution is not None:
        extra, numbers = attribution_arrays(attribution)
        arrays.update(extra)
        attrs = {**attrs, "attribution": numbers}
    attrs = {
        **attrs,
        "n_params": result.dim,
        "lambda_min": result.lambda_min,
        "lambda_max": result.lambda_max,
        "hvp_count": result.hvp_count,
        "seconds": result.seconds,
        "settings": result.settings,
        "bulk_c": result.bulk.c,
        "bulk_d": result.bulk.d,
        "bulk_lambda_min": result.bulk.lambda_min,
        "bulk_lambda_max": result.bulk.lambda_max,
        "hspec_version": __version__,
        "provenance": {**result.provenance, **attrs.get("provenance", {})},
    }
    missing = [name for name in SPECTRUM_ATTRS if name not in attrs]
    if missing:
        raise HspecError(f"attrs: missing {', '.join(missing)}")
    write_group(path, "spectrum", arrays, attrs)


def read_spectrum(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and attributes of a spectrum group (clear error if incomplete)."""
    return read_group(
        path, "spectrum", SPECTRUM_ARRAYS + ("moments",), SPECTRUM_OPTIONAL + ATTRIBUTION_ARRAYS
    )


def attribution_of(arrays: Mapping, attrs: Mapping) -> dict | None:
    """The class-structure attribution of a spectrum read by :func:`read_spectrum`, in the
    form :func:`hspec.curvature.attribution.class_attribution` returns it (plus
    ``outlier_source``), or None if the group has none."""
    if "attribution" not in attrs or "attribution_outliers" not in arrays:
        return None
    values = {part: arrays[f"attribution_values_{part}"] for part in ATTRIBUTION_PARTS}
    errors = {part: arrays[f"attribution_errors_{part}"] for part in ATTRIBUTION_MATCHED}
    return {
        **attrs["attribution"],
        "values": values,
        "relative_errors": errors,
        "outliers": arrays["attribution_outliers"],
    }


def read_attribution(path: Path) -> dict | None:
    """The class-structure attribution stored with a spectrum (:func:`attribution_of`)."""
    return attribution_of(*read_spectrum(path))


def read_result(path: Path) -> SpectralDensity:
    """A stored spectrum as the :class:`~hspec.numerics.spectrum.SpectralDensity` that was
    written (its ``band``, ``resmooth`` and outlier intervals work as on the original),
    without the outliers' vectors. A group of an older hspec lacks what it did not store:
    its ``runs`` (so no band), residuals and provenance are empty and the bulk's
    extreme eigenvalues NaN."""
    return as_result(*read_spectrum(path))


def as_result(arrays: Mapping, attrs: Mapping) -> SpectralDensity:
    """The :class:`~hspec.numerics.spectrum.SpectralDensity` of a spectrum group's
    arrays and attributes, as :func:`read_spectrum` returns them (see :func:`read_result`)."""
    bulk = Normalization(
        attrs.get("bulk_lambda_min", float("nan")),
        attrs.get("bulk_lambda_max", float("nan")),
        attrs["bulk_c"],
        attrs["bulk_d"],
    )
    optional = {name: arrays[name] for name in SPECTRUM_OPTIONAL if name in arrays}
    return SpectralDensity(
        **{name: arrays[name] for name in SPECTRUM_ARRAYS + ("moments",)},
        lambda_min=attrs["lambda_min"],
        lambda_max=attrs["lambda_max"],
        bulk=bulk,
        hvp_count=attrs["hvp_count"],
        dim=attrs["n_params"],
        seconds=attrs["seconds"],
        settings=attrs["settings"],
        provenance=attrs.get("provenance", {}),
        **optional,
    )


def write_history(path: Path, history: Mapping[str, list], attrs: Mapping) -> None:
    """Store per-epoch training curves (arrays named as in HISTORY_ARRAYS)."""
    write_group(path, "history", {name: history[name] for name in HISTORY_ARRAYS}, attrs)


def read_history(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The per-epoch arrays (finite, all of one length) and attributes of a history."""
    arrays, attrs = read_group(path, "history", HISTORY_ARRAYS)
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise HspecError(
            f"{path}: history arrays differ in length ("
            + ", ".join(f"{name} {n}" for name, n in lengths.items())
            + ")"
        )
    return arrays, attrs


BLOCK_NAME = re.compile(r"^[\w.-]+$")


def write_blocks(path: Path, spectra: Mapping[str, tuple], attrs: Mapping) -> None:
    """Store one spectrum per parameter block as a *blocks* group: a subgroup per block
    name (``spectra``: name -> (:class:`hspec.SpectralDensity`, its attrs), each written by
    :func:`write_spectrum`) under a root whose attributes are ``attrs`` plus ``blocks``
    (the names, in order). Atomic as a whole: the root is marked complete last."""
    path = Path(path)
    check_overwritable(path, "blocks")
    bad = [name for name in spectra if not BLOCK_NAME.match(name)]
    if bad or not spectra:
        raise HspecError(f"{path}: block names must be non-empty [A-Za-z0-9_.-], got {bad}")
    try:
        with atomic_directory(path) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            for name, (result, block_attrs) in spectra.items():
                write_spectrum(tmp / name, result, block_attrs)
            group.attrs.update(jsonable({**attrs, "kind": "blocks", "blocks": list(spectra)}))
            group.attrs["complete"] = True
    except OSError as error:
        raise HspecError(f"{path}: cannot write the blocks group ({error})") from error


def is_blocks(path: Path) -> bool:
    """Whether ``path`` holds a blocks group (:func:`write_blocks`), complete or not."""
    return _kind(Path(path)) == "blocks"


def read_blocks(path: Path) -> tuple[dict[str, tuple[dict, dict]], dict]:
    """({block name: (arrays, attrs) of its spectrum}, root attrs) of a blocks group,
    every subgroup checked as :func:`read_spectrum` does."""
    path = Path(path)
    try:
        attrs = dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)
    except Exception as error:  # a missing or foreign group
        raise HspecError(f"{path}: not a readable blocks result ({error})") from error
    if attrs.get("kind") != "blocks" or attrs.get("complete") is not True:
        raise HspecError(
            f"{path}: not a readable blocks result (not a complete blocks group); delete it "
            "and rerun the step that writes it"
        )
    return {name: read_spectrum(path / name) for name in attrs["blocks"]}, attrs
