"""Plots and caption numbers for the paper's figures, from stored spectra.

The figure notebooks (``notebooks/fig*.ipynb``) stay short: they load spectra with
:func:`load`, draw them with the helpers here, and write the numbers the captions quote
with :func:`spectrum_numbers` and :func:`write_numbers`.

Conventions (as in the paper):

* the x-axis is denormalized (the eigenvalue λ itself);
* densities are drawn on a log y-scale, clipped at ``floor``·max so that the log works;
* deflated outliers, which are not part of the stored bulk density, are drawn as stems
  at their positions, as tall as the smoothed bump one eigenvalue of mass 1/n_params
  would make with the bulk's kernel (so they compare with the bumps of a spectrum
  computed without deflation);
* outliers *separated* from the bulk (the count the captions quote) are marked with
  small triangles along the top of the axes.

Nothing here imports pyplot: the helpers draw on axes they are given, and
:func:`save_figure` writes a figure object, so notebooks keep their inline backend.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hspec import analysis
from hspec.density import log_density, smoothing_width
from hspec.errors import HspecError
from hspec.store import read_spectrum

COMPONENT_NAMES = {
    "hessian": "Hessian $H$",
    "gradient_covariance": "covariance of gradients $G$",
    "prediction_hessian": "averaged Hessian of predictions $R$",
}
DATASET_NAMES = {"digits": "digits", "mnist": "MNIST", "fashionmnist": "FashionMNIST",
                 "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
ARCH_NAMES = {"cnn": "CNN", "vgg11": "VGG11", "resnet18": "ResNet18"}
SIGN_COLORS = {1: "tab:red", -1: "tab:blue"}  # Fig. 4d: positive red, negative blue
OUTLIER_COLOR = "tab:red"
DEFAULT_FLOOR = 1e-8
GHOST_TOLERANCE = 1e-4  # Ritz values closer than this × spectrum width count once
# Ritz values with a weight below this × 1/n_params (one eigenvalue's share) are taken
# for Lanczos ghosts or unconverged copies (their weights are near machine precision
# squared); a genuine eigenvalue gets so little weight from a Gaussian start vector
# with probability ≈ 2.5e-5 (weight·n_params ~ χ²₁).
MIN_WEIGHT = 1e-9


# ----------------------------------------------------------------------------- loading

def load(path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, attrs) of a stored spectrum (:func:`hspec.store.read_spectrum`)."""
    return read_spectrum(Path(path))


def load_all(paths: Mapping) -> dict:
    """``{key: (arrays, attrs)}`` for a mapping ``{key: path}``, in the given order."""
    return {key: load(path) for key, path in paths.items()}


def _settings(attrs: Mapping) -> dict:
    return dict(attrs.get("settings") or {})


def _steps_and_k(attrs: Mapping) -> tuple[int, float]:
    settings = _settings(attrs)
    return int(settings.get("steps", 256)), float(settings.get("k", 1.25))


def variant(attrs: Mapping) -> str:
    """'deflated (C=…)' or 'plain', from the stored settings."""
    deflate = int(_settings(attrs).get("deflate", 0) or 0)
    return f"deflated (C={deflate})" if deflate else "plain"


def describe(attrs: Mapping, *, dataset: bool = True, arch: bool = True,
             split: bool = True, component: bool = True, size: bool = True) -> str:
    """A title naming dataset, arch, split, component and examples per class."""
    parts = []
    if dataset:
        parts.append(DATASET_NAMES.get(attrs.get("dataset"), str(attrs.get("dataset"))))
    if arch:
        parts.append(ARCH_NAMES.get(attrs.get("arch"), str(attrs.get("arch"))))
    if split:
        parts.append(str(attrs.get("split")))
    if component:
        parts.append(COMPONENT_NAMES.get(attrs.get("component"),
                                         str(attrs.get("component"))))
    if size and attrs.get("n_per_class") is not None:
        parts.append(f"{attrs['n_per_class']}/class")
    return ", ".join(parts)


def num_classes(attrs: Mapping, override=None) -> int | None:
    """C: ``override`` if given, else ``hspec.data.num_classes(dataset)``, else the
    deflation rank stored in the settings (None if neither is known)."""
    if override is not None:
        return int(override)
    try:
        from hspec.data import num_classes as lookup

        return int(lookup(attrs.get("dataset")))
    except (ImportError, HspecError, KeyError, TypeError):
        deflate = int(_settings(attrs).get("deflate", 0) or 0)
        return deflate or None


# ------------------------------------------------------------------- spectral measures

def kernel_width(attrs: Mapping) -> float:
    """σ of the bulk's Gaussian kernel in eigenvalue units: σ(M, k)·d (Alg. 3)."""
    steps, k = _steps_and_k(attrs)
    return smoothing_width(steps, k) * float(attrs["bulk_d"])


def atom_height(attrs: Mapping) -> float:
    """Peak of the smoothed bump of one eigenvalue (mass 1/n_params) with the bulk's kernel."""
    return 1.0 / (attrs["n_params"] * kernel_width(attrs) * math.sqrt(2 * math.pi))


def atoms(arrays: Mapping, attrs: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The estimated spectral distribution as point masses: the deflated outliers
    (1/n_params each) and the bulk's Ritz quadrature (for KPM, which keeps no
    quadrature, the density's grid cells)."""
    nodes, weights = np.asarray(arrays["nodes"]), np.asarray(arrays["weights"])
    if nodes.size == 0:
        grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
        nodes, weights = grid, density * (grid[1] - grid[0])
    outliers = np.asarray(arrays["outliers"])
    return (np.concatenate([outliers, nodes]),
            np.concatenate([np.full(outliers.size, 1.0 / attrs["n_params"]), weights]))


def separated(arrays: Mapping, attrs: Mapping) -> np.ndarray:
    """The outliers separated from the bulk, descending, each counted once:
    :func:`hspec.analysis.separated_outliers` of the whole distribution (bulk quadrature
    and deflated outliers) with the bulk's kernel reach, ignoring Ritz values lighter
    than ``MIN_WEIGHT``/n_params and merging repeats within ``GHOST_TOLERANCE`` × the
    spectrum's width."""
    values, masses = atoms(arrays, attrs)
    steps, k = _steps_and_k(attrs)
    reach = analysis.kernel_reach(smoothing_width(steps, k)) * float(attrs["bulk_d"])
    width = abs(float(attrs["lambda_max"]) - float(attrs["lambda_min"]))
    return analysis.separated_outliers(values, masses, reach,
                                       min_mass=MIN_WEIGHT / attrs["n_params"],
                                       tolerance=GHOST_TOLERANCE * width)


def bulk_edges(arrays: Mapping, attrs: Mapping, outliers=None,
               quantiles: tuple[float, float] = (0.001, 0.999)) -> tuple[float, float]:
    """:func:`hspec.analysis.bulk_edges` of the bulk's quadrature, leaving out the Ritz
    values of separated outliers (for spectra computed without deflation)."""
    outliers = separated(arrays, attrs) if outliers is None else np.asarray(outliers)
    nodes, weights = np.asarray(arrays["nodes"]), np.asarray(arrays["weights"])
    if nodes.size == 0:
        grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
        nodes, weights = grid, density * (grid[1] - grid[0])
    if outliers.size:
        keep = nodes < outliers.min() - GHOST_TOLERANCE * abs(
            float(attrs["lambda_max"]) - float(attrs["lambda_min"]))
        nodes, weights = nodes[keep], weights[keep]
    if nodes.size == 0 or not np.sum(weights) > 0:
        raise HspecError("bulk: no quadrature mass left below the outliers")
    return analysis.bulk_edges(nodes, weights, quantiles)


def asymmetry(arrays: Mapping, attrs: Mapping) -> float:
    """:func:`hspec.analysis.asymmetry` of the whole estimated distribution."""
    return analysis.asymmetry(*atoms(arrays, attrs))


# ------------------------------------------------------------------------------ drawing

def floor_density(density, floor: float = DEFAULT_FLOOR, reference: float | None = None,
                  at_most: float | None = None) -> tuple[np.ndarray, float]:
    """(density clipped below at a level, the level) for a log scale: the level is
    floor·reference (reference = max(density)), or ``at_most`` if that is lower."""
    density = np.asarray(density, dtype=float)
    reference = float(np.max(density)) if reference is None else float(reference)
    if not reference > 0:
        raise HspecError("density: no positive value to put on a log scale")
    level = floor * reference
    if at_most is not None and 0 < at_most < level:
        level = float(at_most)
    return np.maximum(density, level), level


def mark_outliers(ax, values, *, height: float | None = None, bottom: float | None = None,
                  color: str = OUTLIER_COLOR, label: str | None = None, size: float = 5,
                  linewidth: float = 1.0):
    """Mark eigenvalues at their x positions and return the markers' Line2D.

    With ``height`` (and ``bottom``): stems from ``bottom`` to ``height`` in data units,
    a dot on top (deflated outliers). Without: small down-triangles along the top
    edge of the axes (separated outliers).
    """
    values = np.asarray(values, dtype=float)
    if height is None:
        (line,) = ax.plot(values, np.full(values.size, 0.97), linestyle="none",
                          marker="v", markersize=size, color=color, label=label,
                          transform=ax.get_xaxis_transform(), zorder=4)
        return line
    if bottom is not None and values.size:
        ax.vlines(values, bottom, height, colors=color, linewidth=linewidth, zorder=3)
    (line,) = ax.plot(values, np.full(values.size, height), linestyle="none",
                      marker="o", markersize=size, color=color, label=label, zorder=4)
    return line


def plot_density(ax, arrays: Mapping, attrs: Mapping, *, floor: float = DEFAULT_FLOOR,
                 color: str = "C0", label: str | None = None, title: str | bool = True,
                 stems: bool = True, mark_separated: bool = True,
                 outlier_color: str | None = None, linewidth: float = 1.2,
                 pad: float = 0.03, set_limits: bool = True) -> dict:
    """The bulk density on a log y-scale over the denormalized axis, with the
    deflated outliers as stems and the separated outliers marked along the top.

    The floor is ``floor`` × the highest point drawn, lowered if need be to 1/100 of
    the bump one eigenvalue makes (:func:`atom_height`), so that the outliers of a
    spectrum with many parameters stay above it.

    Returns ``{"line", "floor", "top", "outliers", "separated", "xlim"}``.
    """
    grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
    outliers = np.asarray(arrays["outliers"], dtype=float)
    height = atom_height(attrs) if outliers.size else 0.0
    clipped, level = floor_density(density, floor, max(density.max(), height),
                                   at_most=0.01 * atom_height(attrs))
    (line,) = ax.plot(grid, clipped, color=color, linewidth=linewidth, label=label)
    ax.set_yscale("log")
    outlier_color = outlier_color or (OUTLIER_COLOR if color == "C0" else color)
    if stems and outliers.size:
        mark_outliers(ax, outliers, height=height, bottom=level, color=outlier_color,
                      label=None if label else f"deflated outliers ({outliers.size})")
    found = separated(arrays, attrs)
    if mark_separated and found.size:
        mark_outliers(ax, found, color=outlier_color, size=4,
                      label=None if label else f"separated outliers ({found.size})")
    lo = min(grid[0], outliers.min()) if outliers.size else grid[0]
    hi = max(grid[-1], outliers.max()) if outliers.size else grid[-1]
    margin = pad * (hi - lo)
    xlim = (lo - margin, hi + margin)
    top = max(density.max(), height)
    if set_limits:
        ax.set_xlim(*xlim)
        ax.set_ylim(level, top * 3)
    ax.set_xlabel("eigenvalue $\\lambda$")
    ax.set_ylabel("density")
    if title is True:
        ax.set_title(f"{describe(attrs)} [{variant(attrs)}]", fontsize=9)
    elif title:
        ax.set_title(title, fontsize=9)
    return {"line": line, "floor": level, "top": top, "outliers": outliers,
            "separated": found, "xlim": xlim}


def log_tail(arrays: Mapping, attrs: Mapping, sign: int = 1, *, decades: float = 8.0,
             points: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(|λ|, density in λ) over the eigenvalues of one sign, on a log grid.

    :func:`hspec.density.log_density` of the whole distribution (deflated outliers as
    atoms of mass 1/n_params plus the bulk quadrature), converted from the density of
    u = log10|λ| to the density in |λ|: φ = density_u / (|λ| ln 10).
    """
    values, masses = atoms(arrays, attrs)
    steps, k = _steps_and_k(attrs)
    u, density_u = log_density(values, masses, sign=sign, points=points, decades=decades,
                               steps=steps, k=k)
    x = 10.0 ** u
    return x, density_u / (x * math.log(10))


def plot_log_density(ax, arrays: Mapping, attrs: Mapping, sign: int = 1, *,
                     floor: float = DEFAULT_FLOOR, color: str | None = None,
                     label: str | None = None, decades: float = 8.0,
                     title: str | bool = True) -> dict:
    """The density of |λ| over one sign on log–log axes (Fig. 4b, 4d); the x-range
    is where the density is above the floor (``xlim`` in the result)."""
    x, phi = log_tail(arrays, attrs, sign, decades=decades)
    clipped, level = floor_density(phi, floor)
    color = color or SIGN_COLORS[sign]
    (line,) = ax.loglog(x, clipped, color=color, linewidth=1.2, label=label)
    above = np.flatnonzero(phi > level)
    xlim = (x[max(above[0] - 1, 0)] / 1.5, x[min(above[-1] + 1, x.size - 1)] * 1.5)
    ax.set_xlim(*xlim)
    ax.set_ylim(level / 2, phi.max() * 3)
    ax.set_xlabel("$|\\lambda|$" + (" ($\\lambda > 0$)" if sign > 0 and not label else ""))
    ax.set_ylabel("density")
    if title is True:
        ax.set_title(describe(attrs), fontsize=9)
    elif title:
        ax.set_title(title, fontsize=9)
    return {"line": line, "floor": level, "x": x, "phi": phi, "xlim": xlim}


# ------------------------------------------------------------------------- power law

AUTO_FIT_RULE = (
    "automatic fit range, per sign: the {span:g} decades of |λ| below the largest |λ| of "
    "that sign, ending two kernel widths (of the log-axis smoothing) below it so that "
    "the smoothed edge is left out: the tail of the spectrum, away from the concentration "
    "of eigenvalues near zero")


def auto_fit_range(arrays: Mapping, attrs: Mapping, sign: int = 1, *, span: float = 1.0,
                   decades: float = 8.0) -> tuple[float, float]:
    """The fit range [lo, hi] in |λ| chosen by the rule in ``AUTO_FIT_RULE``."""
    values, _ = atoms(arrays, attrs)
    side = values * sign
    if not np.any(side > 0):
        raise HspecError(f"fit range: no eigenvalues of sign {sign:+d}")
    top = math.log10(side[side > 0].max())
    steps, k = _steps_and_k(attrs)
    sigma_u = decades / 2 * smoothing_width(steps, k)  # log_density's default width
    return float(10 ** (top - span)), float(10 ** (top - 2 * sigma_u))


def fit_tail(arrays: Mapping, attrs: Mapping, sign: int = 1, fit_range=None, *,
             span: float = 1.0, decades: float = 8.0) -> dict:
    """Power law φ = a·|λ|^(−b) fitted to the density of |λ| over one sign
    (:func:`hspec.analysis.power_law_fit`) on ``fit_range`` = [lo, hi] or, if None,
    on :func:`auto_fit_range`. Returns a, b, r2, points, lo, hi, sign, rule; on
    failure ``{"error": message, "sign", "rule"}``."""
    rule = "given" if fit_range is not None else AUTO_FIT_RULE.format(span=span)
    try:
        if fit_range is None:
            lo, hi = auto_fit_range(arrays, attrs, sign, span=span, decades=decades)
        else:
            lo, hi = (float(v) for v in fit_range)
        x, phi = log_tail(arrays, attrs, sign, decades=decades)
        fit = analysis.power_law_fit(x, phi, lo, hi)
    except HspecError as error:
        return {"error": str(error), "sign": sign, "rule": rule}
    return {**fit, "sign": sign, "rule": rule}


def plot_fit(ax, fit: Mapping, *, color: str = "black", shade: bool = True):
    """The fitted power law as a dashed line over its range (and the range shaded)."""
    if "error" in fit:
        return None
    x = np.geomspace(fit["lo"], fit["hi"], 64)
    if shade:
        ax.axvspan(fit["lo"], fit["hi"], color="0.85", alpha=0.5, zorder=0)
    (line,) = ax.loglog(x, fit["a"] * x ** -fit["b"], linestyle="--", color=color,
                        linewidth=1.5,
                        label=f"$\\phi = {fit['a']:.2g}\\,|\\lambda|^{{-{fit['b']:.2f}}}$, "
                              f"$R^2 = {fit['r2']:.2f}$")
    return line


def legend(ax, **kwargs):
    """``ax.legend(**kwargs)`` if the axes hold labelled artists (else nothing)."""
    handles, _ = ax.get_legend_handles_labels()
    return ax.legend(**kwargs) if handles else None


def zoom(ax, arrays: Mapping, lo: float, hi: float, floor: float = DEFAULT_FLOOR) -> None:
    """Limit the x-axis to [lo, hi] and the y-axis to the density drawn there."""
    grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
    inside = density[(grid >= lo) & (grid <= hi)]
    ax.set_xlim(lo, hi)
    if inside.size and inside.max() > 0:
        top = inside.max()
        ax.set_ylim(max(inside[inside > 0].min(), floor * top) / 2, top * 3)


def union_limits(ax, drawn) -> None:
    """Set the limits of an axis holding several :func:`plot_density` curves (drawn
    with ``set_limits=False``) to cover all of them."""
    drawn = list(drawn)
    ax.set_xlim(min(d["xlim"][0] for d in drawn), max(d["xlim"][1] for d in drawn))
    ax.set_ylim(min(d["floor"] for d in drawn), max(d["top"] for d in drawn) * 3)


# ------------------------------------------------------------------------------ numbers

def align(values, reference) -> list[dict]:
    """For each value, the nearest reference value and their relative difference
    (e.g. Fig. 3: deflated outliers against the separated Ritz values of a spectrum
    computed without deflation)."""
    reference = np.asarray(reference, dtype=float)
    pairs = []
    for value in np.asarray(values, dtype=float):
        if reference.size == 0:
            break
        nearest = float(reference[np.argmin(np.abs(reference - value))])
        pairs.append({"value": float(value), "reference": nearest,
                      "relative_difference": abs(nearest - value) / max(abs(value), 1e-300)})
    return pairs


def per_class_value(key, attrs: Mapping, classes=None) -> float | None:
    """Examples per class of a spectrum, for ordering and colouring Fig. 5's curves:
    the key if it is a number, else ``attrs["n_per_class"]`` if that is one, else (a
    train spectrum of a whole split, e.g. key "full") n_samples / C; None otherwise."""
    for candidate in (key, attrs.get("n_per_class")):
        try:
            return float(candidate)
        except (TypeError, ValueError):
            pass
    C = num_classes(attrs, classes)
    if attrs.get("split") == "train" and C and attrs.get("n_samples"):
        return float(attrs["n_samples"]) / C
    return None


def spectrum_numbers(arrays: Mapping, attrs: Mapping, path=None, classes=None) -> dict:
    """The numbers a caption quotes for one spectrum."""
    found = separated(arrays, attrs)
    C = num_classes(attrs, classes)
    try:
        edges = [float(v) for v in bulk_edges(arrays, attrs, found)]
    except HspecError:
        edges = None
    settings = _settings(attrs)
    return {
        "path": None if path is None else str(path),
        "dataset": attrs.get("dataset"), "arch": attrs.get("arch"),
        "split": attrs.get("split"), "component": attrs.get("component"),
        "n_per_class": attrs.get("n_per_class"), "n_samples": attrs.get("n_samples"),
        "n_params": attrs.get("n_params"),
        "method": settings.get("method"), "steps": settings.get("steps"),
        "deflate": settings.get("deflate"),
        "num_classes": C,
        "outliers_found": int(found.size),
        "outliers_equal_classes": None if C is None else bool(found.size == C),
        "separated_outliers": [float(v) for v in found],
        "deflated_outliers": [float(v) for v in np.asarray(arrays["outliers"])],
        "bulk_edges": edges,
        "lambda_min": float(attrs["lambda_min"]), "lambda_max": float(attrs["lambda_max"]),
        "hvp_count": int(attrs["hvp_count"]),
        "asymmetry": float(asymmetry(arrays, attrs)),
    }


def summary(label, numbers: Mapping) -> str:
    """One line with the measured numbers of a spectrum."""
    edges = numbers["bulk_edges"]
    edges = "n/a" if edges is None else f"[{edges[0]:.4g}, {edges[1]:.4g}]"
    equal = numbers["outliers_equal_classes"]
    verdict = "" if equal is None else ("; equals C" if equal else "; differs from C")
    return (f"{label}: outliers found: {numbers['outliers_found']} "
            f"(classes: {numbers['num_classes']}{verdict}); bulk edges {edges}; "
            f"range [{numbers['lambda_min']:.4g}, {numbers['lambda_max']:.4g}]; "
            f"{numbers['hvp_count']} products")


def jsonable(value):
    """Plain JSON types: floats as floats, non-finite floats as None."""
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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_numbers(numbers: Mapping, path) -> Path:
    """Write numbers as JSON (sorted keys, indented), atomically."""
    path = Path(path)
    text = json.dumps(jsonable(numbers), sort_keys=True, indent=2, allow_nan=False)
    _atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def save_figure(fig, stem, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (each via a temporary file and os.replace)."""
    stem = Path(stem)
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        # no bbox_inches="tight": the notebooks lay figures out themselves, and a tight
        # box costs one more full draw per format
        _atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi))
        paths.append(path)
    return paths
