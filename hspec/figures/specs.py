"""Which stored spectra each figure draws: the one figure → spectra map.

:func:`figure_parameters` turns a ``figures:`` entry of the config (arch, datasets,
per_class) into the figure notebook's parameters. The workflow
(``workflow/rules/common.smk``) passes them to papermill and takes every path among
them for the figure's inputs; the notebooks' own defaults are the same function applied
to ``config/demo.yaml`` (:func:`notebook_defaults`), so the three can not drift apart.

Every entry is honoured: one panel (Figs. 1–4) or one column of panels (Fig. 5) per
dataset and examples-per-class size; Fig. 5 draws its sizes as curves of one panel.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from hspec import settings
from hspec.errors import HspecError
from hspec.pipeline.store import is_blocks, read_blocks, read_spectrum

NOTEBOOKS = {
    "fig1": "fig1_train_hessian",
    "fig2": "fig2_test_hessian",
    "fig3": "fig3_deflation",
    "fig4": "fig4_components",
    "fig5": "fig5_sample_size",
    "fig6": "fig6_class_structure",
    "fig7": "fig7_blocks",
}
# the config a notebook's defaults come from: the demo's, except for a figure the demo
# does not make (the per-block spectra: too slow for the demo's 5 minutes)
DEFAULT_CONFIGS = {"fig7": "config/transformer.yaml"}
COMPONENTS = ("hessian", "gradient_covariance", "prediction_hessian")
# Fig. 4 (a), (c): H and G deflated, R plain (R has no outliers to deflate)
FIG4_VARIANTS = {
    "hessian": "deflated",
    "gradient_covariance": "deflated",
    "prediction_hessian": "plain",
}


def spectrum_path(results, arch, dataset, n, split, component, variant) -> str:
    """Where the workflow stores one spectrum (the layout of ``rule spectrum``)."""
    return f"{results}/spectra/{arch}/{dataset}/n{n}/{split}-{component}-{variant}.zarr"


def blocks_path(results, arch, dataset, n, split, component) -> str:
    """Where the workflow stores one model's per-block spectra (``rule block_spectra``)."""
    return f"{results}/spectra/{arch}/{dataset}/n{n}/{split}-{component}-blocks.zarr"


def figure_files(fig: str, results) -> dict:
    """The notebook's outputs: ``figure`` (a stem: .png and .pdf) and ``numbers``."""
    return {
        "figure": f"{results}/figures/{fig}/{fig}",
        "numbers": f"{results}/figures/{fig}/numbers.json",
    }


def _label(dataset, n, sizes) -> str:
    return dataset if len(sizes) == 1 else f"{dataset} n={n}"


def figure_parameters(fig: str, spec: Mapping, results, blocks: Mapping | None = None) -> dict:
    """The spectra of figure ``fig`` for its config entry ``spec`` (arch, datasets,
    per_class), under the results folder ``results`` (``blocks``: the config's
    ``blocks`` settings, for fig7; default: the schema's):

    * fig1, fig2: ``{"spectra": {label: path}}``, the train (fig1) or test (fig2)
      Hessian, plain, one panel per dataset and size; fig2 also ``{"train_spectra":
      {label: path}}``, the train Hessian of the same models (the magnitude ratio);
    * fig3: ``{"panels": {label: {"deflated": path, "plain": path}}}``, train Hessian;
    * fig4: ``{"panels": {label: {"spectra": {component: path}, "log_spectra":
      {component: path}}}}``, test H, G, R;
    * fig5: ``{"panels": {dataset: {"train": {size: path}, "test": {size: path}}}}``,
      the covariance of gradients, plain, one curve per size;
    * fig6: as fig5 (the same spectra: their stored class-structure attribution).
    * fig7: ``{"panels": {label: {"blocks": path, "whole": path}}}``, the per-block
      spectra (a blocks group) and the whole model's plain spectrum, of the split and
      component of ``blocks``.

    Labels are the dataset, with `` n=size`` appended when there are several sizes;
    sizes are strings (papermill passes parameters as JSON, whose keys are strings).
    """
    if fig not in NOTEBOOKS:
        raise HspecError(f"figures: unknown figure {fig!r} (known: {', '.join(NOTEBOOKS)})")
    arch, datasets = spec["arch"], list(spec["datasets"])
    sizes = [str(n) for n in spec["per_class"]]

    def path(dataset, n, split, component, variant):
        return spectrum_path(results, arch, dataset, n, split, component, variant)

    entries = [(_label(d, n, sizes), d, n) for d in datasets for n in sizes]
    if fig in ("fig1", "fig2"):
        split = "train" if fig == "fig1" else "test"
        spectra = {
            "spectra": {label: path(d, n, split, "hessian", "plain") for label, d, n in entries}
        }
        if fig == "fig2":  # the train Hessian of each model, for the test/train magnitude ratio
            spectra["train_spectra"] = {
                label: path(d, n, "train", "hessian", "plain") for label, d, n in entries
            }
        return spectra
    if fig == "fig3":
        return {
            "panels": {
                label: {v: path(d, n, "train", "hessian", v) for v in ("deflated", "plain")}
                for label, d, n in entries
            }
        }
    if fig == "fig7":
        chosen = {**settings.defaults()["blocks"], **(blocks or {})}
        split, component = chosen["split"], chosen["component"]
        return {
            "panels": {
                label: {
                    "blocks": blocks_path(results, arch, d, n, split, component),
                    "whole": path(d, n, split, component, "plain"),
                }
                for label, d, n in entries
            }
        }
    if fig == "fig4":
        return {
            "panels": {
                label: {
                    "spectra": {c: path(d, n, "test", c, FIG4_VARIANTS[c]) for c in COMPONENTS},
                    "log_spectra": {c: path(d, n, "test", c, "log") for c in COMPONENTS},
                }
                for label, d, n in entries
            }
        }
    return {
        "panels": {
            d: {
                split: {n: path(d, n, split, "gradient_covariance", "plain") for n in sizes}
                for split in ("train", "test")
            }
            for d in datasets
        }
    }


def spectrum_paths(parameters) -> list[str]:
    """Every path among a figure's parameters, in order (the figure's inputs)."""
    if isinstance(parameters, Mapping):
        return [p for value in parameters.values() for p in spectrum_paths(value)]
    return [parameters]


def papermill_yaml(fig: str, spec: Mapping, results, blocks: Mapping | None = None) -> str:
    """papermill ``-y``: the parameters plus the outputs, as JSON (which is YAML), in
    the config's order (papermill keeps it: the panels come in that order)."""
    return json.dumps(
        {**figure_parameters(fig, spec, results, blocks), **figure_files(fig, results)}
    )


#: the folder above the package: the checkout, for an editable install
CHECKOUT = Path(__file__).resolve().parents[2]


def find_root(start) -> Path:
    """The repository holding ``config/demo.yaml``: the first of ``start`` and its parents
    (a copy of the repository works the same), else the checkout hspec is installed from
    (an editable install: a workflow run in another working directory still finds it)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents, CHECKOUT):
        if (folder / "config" / "demo.yaml").is_file():
            return folder
    raise HspecError(
        f"{start}: no config/demo.yaml here or above; run the notebook "
        "inside the repository (e.g. from notebooks/)"
    )


def notebook_defaults(fig: str, start=None) -> dict:
    """The notebook's default parameters: :func:`figure_parameters` and
    :func:`figure_files` for the demo (``config/demo.yaml`` of the repository above
    ``start``, the working directory by default; for a figure of ``DEFAULT_CONFIGS``,
    that config), with paths relative to ``start``: ``../results/demo/...`` where
    Jupyter runs a notebook (``notebooks/``)."""
    start = Path.cwd() if start is None else Path(start)
    root = find_root(start)
    config = yaml.safe_load((root / DEFAULT_CONFIGS.get(fig, "config/demo.yaml")).read_text())
    results = os.path.relpath(root / config["results"], start.resolve())
    return {
        **figure_parameters(fig, config["figures"][fig], results, config.get("blocks")),
        **figure_files(fig, results),
    }


# ----------------------------------------------------------------------------- loading


def writer_hint(path) -> str:
    """How to make a missing spectrum: the ``snakemake`` target that writes it, relative
    to the repository above it (see :func:`find_root`)."""
    path = Path(path).resolve()
    try:
        root = find_root(path.parent)
    except HspecError:
        return f"run the workflow step that writes {path}"
    target = path.relative_to(root)
    demo = " (the demo's: `make demo`)" if target.parts[:2] == ("results", "demo") else ""
    return (
        f"it is written by `snakemake --cores all {target}`, run in {root} with the "
        f"config that names it{demo}"
    )


def load(path) -> tuple[dict, dict]:
    """(arrays, attrs) of a stored spectrum (:func:`hspec.pipeline.store.read_spectrum`),
    or ({block: (arrays, attrs)}, attrs) of a blocks group (:func:`read_blocks`); a
    missing one is one :class:`HspecError` naming the ``snakemake`` target to run."""
    if not Path(path).exists():
        raise HspecError(f"{path}: no such spectrum; {writer_hint(path)}")
    if is_blocks(Path(path)):
        return read_blocks(Path(path))
    return read_spectrum(Path(path))


def load_all(paths: Mapping) -> dict:
    """The same mapping with every path replaced by :func:`load` of it (nested)."""
    return {
        key: load_all(value) if isinstance(value, Mapping) else load(value)
        for key, value in paths.items()
    }
