"""The numbers the figures' captions quote, from stored spectra.

Conventions (as in the paper): eigenvalues are denormalized (λ itself); an outlier is
*separated* when it lies above the bulk's smoothed density (:func:`separated`); the
bulk's edges are quantiles of its quadrature without those outliers.

Besides the measures of one spectrum (:func:`spectrum_numbers`), one function per
figure gathers what its caption quotes (:func:`hessian_numbers`,
:func:`deflation_numbers`, :func:`components_numbers`, :func:`sample_size_numbers`),
:func:`summary_lines` says it in words, and :func:`write_numbers` stores it as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hspec.atomic import write_json
from hspec.errors import HspecError
from hspec.numerics import analysis
from hspec.numerics.density import log_density, smoothing_width

GHOST_TOLERANCE = 1e-4  # Ritz values closer than this × spectrum width count once
# Ritz values with a weight below this × 1/n_params (one eigenvalue's share) are taken
# for Lanczos ghosts or unconverged copies (their weights are near machine precision
# squared); a genuine eigenvalue gets so little weight from a Gaussian start vector
# with probability ≈ 2.5e-5 (weight·n_params ~ χ²₁).
MIN_WEIGHT = 1e-9


def _settings(attrs: Mapping) -> dict:
    return dict(attrs.get("settings") or {})


def _steps_and_k(attrs: Mapping) -> tuple[int, float]:
    settings = _settings(attrs)
    return int(settings.get("steps", 256)), float(settings.get("k", 1.25))


def num_classes(attrs: Mapping, override=None) -> int | None:
    """C: ``override`` if given, else ``hspec.pipeline.data.num_classes(dataset)``, else the
    deflation rank stored in the settings (None if neither is known)."""
    if override is not None:
        return int(override)
    try:
        from hspec.pipeline.data import num_classes as lookup

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
    return (
        np.concatenate([outliers, nodes]),
        np.concatenate([np.full(outliers.size, 1.0 / attrs["n_params"]), weights]),
    )


def separated(arrays: Mapping, attrs: Mapping) -> np.ndarray:
    """The outliers separated from the bulk, descending, each counted once:
    :func:`hspec.numerics.analysis.separated_outliers` of the whole distribution (bulk quadrature
    and deflated outliers) with the bulk's kernel reach, ignoring Ritz values lighter
    than ``MIN_WEIGHT``/n_params and merging repeats within ``GHOST_TOLERANCE`` × the
    spectrum's width."""
    values, masses = atoms(arrays, attrs)
    steps, k = _steps_and_k(attrs)
    reach = analysis.kernel_reach(smoothing_width(steps, k)) * float(attrs["bulk_d"])
    width = abs(float(attrs["lambda_max"]) - float(attrs["lambda_min"]))
    return analysis.separated_outliers(
        values,
        masses,
        reach,
        min_mass=MIN_WEIGHT / attrs["n_params"],
        tolerance=GHOST_TOLERANCE * width,
    )


def bulk_edges(
    arrays: Mapping, attrs: Mapping, outliers=None, quantiles: tuple[float, float] = (0.001, 0.999)
) -> tuple[float, float]:
    """:func:`hspec.numerics.analysis.bulk_edges` of the bulk's quadrature, leaving out the Ritz
    values of separated outliers (for spectra computed without deflation)."""
    outliers = separated(arrays, attrs) if outliers is None else np.asarray(outliers)
    nodes, weights = np.asarray(arrays["nodes"]), np.asarray(arrays["weights"])
    if nodes.size == 0:
        grid, density = np.asarray(arrays["grid"]), np.asarray(arrays["density"])
        nodes, weights = grid, density * (grid[1] - grid[0])
    if outliers.size:
        keep = nodes < outliers.min() - GHOST_TOLERANCE * abs(
            float(attrs["lambda_max"]) - float(attrs["lambda_min"])
        )
        nodes, weights = nodes[keep], weights[keep]
    if nodes.size == 0 or not np.sum(weights) > 0:
        raise HspecError("bulk: no quadrature mass left below the outliers")
    return analysis.bulk_edges(nodes, weights, quantiles)


def asymmetry(arrays: Mapping, attrs: Mapping) -> float:
    """:func:`hspec.numerics.analysis.asymmetry` of the whole estimated distribution."""
    return analysis.asymmetry(*atoms(arrays, attrs))


def log_tail(
    arrays: Mapping, attrs: Mapping, sign: int = 1, *, decades: float = 8.0, points: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(|λ|, density in λ) over the eigenvalues of one sign, on a log grid.

    :func:`hspec.numerics.density.log_density` of the whole distribution (deflated outliers as
    atoms of mass 1/n_params plus the bulk quadrature), converted from the density of
    u = log10|λ| to the density in |λ|: φ = density_u / (|λ| ln 10).
    """
    values, masses = atoms(arrays, attrs)
    steps, k = _steps_and_k(attrs)
    u, density_u = log_density(
        values, masses, sign=sign, points=points, decades=decades, steps=steps, k=k
    )
    x = 10.0**u
    return x, density_u / (x * math.log(10))


# ------------------------------------------------------------------------- power law

AUTO_FIT_RULE = (
    "automatic fit range, per sign: the {span:g} decade(s) of |λ| below the largest |λ| of "
    "that sign, ending two kernel widths (of the log-axis smoothing) below it so that "
    "the smoothed edge is left out: the tail of the spectrum, away from the concentration "
    "of eigenvalues near zero"
)


def auto_fit_range(
    arrays: Mapping, attrs: Mapping, sign: int = 1, *, span: float = 1.0, decades: float = 8.0
) -> tuple[float, float]:
    """The fit range [lo, hi] in |λ| chosen by the rule in ``AUTO_FIT_RULE``."""
    values, _ = atoms(arrays, attrs)
    side = values * sign
    if not np.any(side > 0):
        raise HspecError(f"fit range: no eigenvalues of sign {sign:+d}")
    top = math.log10(side[side > 0].max())
    steps, k = _steps_and_k(attrs)
    sigma_u = decades / 2 * smoothing_width(steps, k)  # log_density's default width
    return float(10 ** (top - span)), float(10 ** (top - 2 * sigma_u))


def fit_tail(
    arrays: Mapping,
    attrs: Mapping,
    sign: int = 1,
    fit_range=None,
    *,
    span: float = 1.0,
    decades: float = 8.0,
) -> dict:
    """Power law φ = a·|λ|^(−b) fitted to the density of |λ| over one sign
    (:func:`hspec.numerics.analysis.power_law_fit`) on ``fit_range`` = [lo, hi] or, if None,
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
        pairs.append(
            {
                "value": float(value),
                "reference": nearest,
                "relative_difference": abs(nearest - value) / max(abs(value), 1e-300),
            }
        )
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
        "dataset": attrs.get("dataset"),
        "arch": attrs.get("arch"),
        "split": attrs.get("split"),
        "component": attrs.get("component"),
        "n_per_class": attrs.get("n_per_class"),
        "n_samples": attrs.get("n_samples"),
        "n_params": attrs.get("n_params"),
        "method": settings.get("method"),
        "steps": settings.get("steps"),
        "deflate": settings.get("deflate"),
        "num_classes": C,
        "outliers_found": int(found.size),
        "outliers_equal_classes": None if C is None else bool(found.size == C),
        "separated_outliers": [float(v) for v in found],
        "deflated_outliers": [float(v) for v in np.asarray(arrays["outliers"])],
        "bulk_edges": edges,
        "lambda_min": float(attrs["lambda_min"]),
        "lambda_max": float(attrs["lambda_max"]),
        "hvp_count": int(attrs["hvp_count"]),
        "asymmetry": float(asymmetry(arrays, attrs)),
    }


def summary(label, numbers: Mapping) -> str:
    """One line with the measured numbers of a spectrum."""
    edges = numbers["bulk_edges"]
    edges = "n/a" if edges is None else f"[{edges[0]:.4g}, {edges[1]:.4g}]"
    equal = numbers["outliers_equal_classes"]
    verdict = "" if equal is None else ("; equals C" if equal else "; differs from C")
    return (
        f"{label}: outliers found: {numbers['outliers_found']} "
        f"(classes: {numbers['num_classes']}{verdict}); bulk edges {edges}; "
        f"range [{numbers['lambda_min']:.4g}, {numbers['lambda_max']:.4g}]; "
        f"{numbers['hvp_count']} products"
    )


def write_numbers(numbers: Mapping, path) -> Path:
    """Write a figure's numbers as JSON (sorted keys, indented), atomically."""
    return write_json(path, numbers)


# -------------------------------------------------------------------------- per figure


def _largest(pairs) -> float | None:
    return max((p["relative_difference"] for p in pairs), default=None)


def hessian_numbers(fig: str, loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Figs. 1–2: :func:`spectrum_numbers` of every panel's Hessian."""
    return {
        "figure": fig,
        "split": "train" if fig == "fig1" else "test",
        "component": "hessian",
        "spectra": {
            label: spectrum_numbers(*loaded[label], paths[label], classes) for label in loaded
        },
    }


def deflation_panel(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 3, one panel: both spectra's numbers, and each separated outlier of the
    deflated spectrum paired with the nearest separated Ritz value of the plain one."""
    top = spectrum_numbers(*loaded["deflated"], paths["deflated"], classes)
    bottom = spectrum_numbers(*loaded["plain"], paths["plain"], classes)
    pairs = align(top["separated_outliers"], bottom["separated_outliers"])
    return {
        "deflated": top,
        "plain": bottom,
        "alignment": pairs,
        "max_relative_difference": _largest(pairs),
    }


def deflation_numbers(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 3: :func:`deflation_panel` per panel."""
    return {
        "figure": "fig3",
        "panels": {
            label: deflation_panel(loaded[label], paths[label], classes) for label in loaded
        },
    }


COMPONENT_ORDER = ("hessian", "gradient_covariance", "prediction_hessian")


def ordered_components(components) -> list:
    """H, G, R first (in that order), then any other component as given."""
    components = list(components)
    return [c for c in COMPONENT_ORDER if c in components] + [
        c for c in components if c not in COMPONENT_ORDER
    ]


def tail_component(components) -> str:
    """The component whose tail Fig. 4d fits: R if present, else the last one."""
    return (
        "prediction_hessian"
        if "prediction_hessian" in components
        else ordered_components(components)[-1]
    )


def zoom_range(loaded: Mapping) -> tuple[str, tuple[float, float]]:
    """Fig. 4c's x-range: the bulk edges of R (of the first component if R is absent),
    widened by 10 % on each side; returns (that component, (lo, hi))."""
    reference = (
        "prediction_hessian" if "prediction_hessian" in loaded else ordered_components(loaded)[0]
    )
    lo, hi = bulk_edges(*loaded[reference])
    return reference, (lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))


def components_panel(
    loaded: Mapping,
    log_loaded: Mapping,
    paths: Mapping,
    log_paths: Mapping,
    fit_range=None,
    classes=None,
) -> dict:
    """Fig. 4, one model: every component's numbers (plain and log variants), H's
    outliers paired with G's, the power law fitted to each sign of the tail component's
    log variant, its asymmetry, and the zoom range of (c)."""
    components = ordered_components(loaded)
    missing = [c for c in components if c not in log_loaded]
    if missing:
        raise HspecError(f"fig4: log_spectra has no {', '.join(missing)}")
    results = {c: spectrum_numbers(*loaded[c], paths[c], classes) for c in components}
    log_results = {c: spectrum_numbers(*log_loaded[c], log_paths[c], classes) for c in components}
    attribution = []
    if "hessian" in results and "gradient_covariance" in results:
        attribution = align(
            results["hessian"]["separated_outliers"],
            results["gradient_covariance"]["separated_outliers"],
        )
    tail = tail_component(components)
    fit = fit_tail(*log_loaded[tail], 1, fit_range)
    reference, zoom = zoom_range(loaded)
    return {
        "spectra": results,
        "log_spectra": log_results,
        "fit": fit,
        "fit_negative": fit_tail(*log_loaded[tail], -1, fit_range),
        "fit_range": None if "error" in fit else [fit["lo"], fit["hi"]],
        "fit_range_given": fit_range is not None,
        "asymmetry": asymmetry(*log_loaded[tail]),
        "asymmetry_component": tail,
        "outlier_attribution": attribution,
        "zoom_range": list(zoom),
        "zoom_reference": reference,
    }


def components_numbers(loaded: Mapping, paths: Mapping, fit_range=None, classes=None) -> dict:
    """Fig. 4: :func:`components_panel` per model; ``loaded`` and ``paths`` map a panel
    label to ``{"spectra": {component: ...}, "log_spectra": {component: ...}}``."""
    return {
        "figure": "fig4",
        "fit_rule": AUTO_FIT_RULE.format(span=1.0),
        "panels": {
            label: components_panel(
                loaded[label]["spectra"],
                loaded[label]["log_spectra"],
                paths[label]["spectra"],
                paths[label]["log_spectra"],
                fit_range,
                classes,
            )
            for label in loaded
        },
    }


def curve_sizes(splits: Mapping, classes=None) -> dict:
    """Fig. 5: ``{split: {key: examples per class}}`` (:func:`per_class_value`); a test
    curve whose size is unknown borrows the train curve's of the same key, and any still
    unknown is put after the largest known (1.5 × it; 1 if none is known)."""
    sizes = {
        split: {key: per_class_value(key, attrs, classes) for key, (_, attrs) in curves.items()}
        for split, curves in splits.items()
    }
    for key, value in sizes.get("test", {}).items():
        if value is None:
            sizes["test"][key] = sizes.get("train", {}).get(key)
    known = [v for s in sizes.values() for v in s.values() if v is not None]
    fallback = 1.5 * max(known) if known else 1.0
    return {
        split: {key: fallback if value is None else value for key, value in s.items()}
        for split, s in sizes.items()
    }


def sample_size_panel(splits: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 5, one dataset: every curve's numbers (with ``per_class_value``) and, per
    split, ``[key, examples per class, outliers found]`` in order of the size."""
    sizes = curve_sizes(splits, classes)
    results, trend = {}, {}
    for split, curves in splits.items():
        results[split] = {
            str(key): {
                **spectrum_numbers(*curves[key], paths[split][key], classes),
                "per_class_value": sizes[split][key],
            }
            for key in curves
        }
        order = sorted(curves, key=lambda key: sizes[split][key])
        trend[split] = [
            [str(key), sizes[split][key], results[split][str(key)]["outliers_found"]]
            for key in order
        ]
    return {"spectra": results, "outliers_by_size": trend}


def sample_size_numbers(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 5: :func:`sample_size_panel` per dataset."""
    return {
        "figure": "fig5",
        "component": "gradient_covariance",
        "panels": {
            label: sample_size_panel(loaded[label], paths[label], classes) for label in loaded
        },
    }


def _pairs_lines(pairs, value, reference) -> list[str]:
    return [
        f"  {value} {p['value']:.5g} <-> {reference} {p['reference']:.5g}: "
        f"relative difference {p['relative_difference']:.2e}"
        for p in pairs
    ]


def _fit_line(sign, fit) -> str:
    if "error" in fit:
        return f"power law on {sign}: no fit ({fit['error']})"
    return (
        f"power law on {sign}: phi = {fit['a']:.3g} |lambda|^-{fit['b']:.3f}, "
        f"R^2 = {fit['r2']:.3f}, on |lambda| in [{fit['lo']:.3g}, {fit['hi']:.3g}] "
        f"({fit['points']} grid points)"
    )


def summary_lines(numbers: Mapping) -> list[str]:
    """What a figure's numbers say, in words (what its notebook prints)."""
    fig, lines = numbers["figure"], []
    if fig in ("fig1", "fig2"):
        for label, values in numbers["spectra"].items():
            lines += [
                summary(label, values),
                "   separated outliers: "
                + str([round(v, 4) for v in values["separated_outliers"]]),
            ]
    for label, panel in numbers.get("panels", {}).items():
        lines.append(f"[{label}]")
        if fig == "fig3":
            lines += [
                summary("deflated (top)", panel["deflated"]),
                summary("plain (bottom)", panel["plain"]),
            ]
            lines += _pairs_lines(panel["alignment"], "deflated", "plain Ritz value")
            lines.append(f"largest relative difference: {panel['max_relative_difference']}")
        elif fig == "fig4":
            for c, values in panel["spectra"].items():
                lines += [
                    summary(c, values),
                    summary(f"{c} (log variant)", panel["log_spectra"][c]),
                ]
            lines.append("H's separated outliers against the nearest of G's:")
            lines += _pairs_lines(panel["outlier_attribution"], "H", "G")
            lines += [
                _fit_line("lambda > 0", panel["fit"]),
                _fit_line("lambda < 0", panel["fit_negative"]),
                "fit range: " + ("given" if panel["fit_range_given"] else "automatic rule"),
                f"asymmetry of {panel['asymmetry_component']} (log variant): "
                f"{panel['asymmetry']:.4f}; 0 = symmetric about 0, 1 = one-signed",
                f"zoom range of (c): [{panel['zoom_range'][0]:.4g}, "
                f"{panel['zoom_range'][1]:.4g}] from the bulk edges of "
                f"{panel['zoom_reference']}",
            ]
        elif fig == "fig5":
            for split, trend in panel["outliers_by_size"].items():
                lines.append(f"{split}:")
                lines += [
                    "  " + summary(f"{key}/class", panel["spectra"][split][key])
                    for key, _, _ in trend
                ]
                counts = [count for _, _, count in trend]
                lines.append(
                    f"  outliers in order of sample size: {counts}; "
                    f"non-decreasing: {all(a <= b for a, b in zip(counts, counts[1:]))}"
                )
    return lines


# ------------------------------------------------------------------ per-block spectra

# the slack of the interlacing check, relative to the whole spectrum's width: the extreme
# eigenvalues of the stored spectra are Lanczos estimates, not exact
INTERLACING_SLACK = 1e-2


def trace(arrays: Mapping, attrs: Mapping) -> float:
    """The trace the spectrum implies: n_params × Σ mass·λ over :func:`atoms` (the
    Lanczos quadrature's estimate of tr A, a stochastic trace estimate)."""
    values, masses = atoms(arrays, attrs)
    return float(attrs["n_params"] * np.sum(values * masses))


def extremes(arrays: Mapping, attrs: Mapping) -> tuple[float, float]:
    """The smallest and largest eigenvalue estimates (Ritz values and deflated outliers
    heavier than ``MIN_WEIGHT``/n_params)."""
    values, masses = atoms(arrays, attrs)
    values = values[masses >= MIN_WEIGHT / attrs["n_params"]]
    return float(values.min()), float(values.max())


def blocks_panel(blocks: tuple, whole: tuple, paths: Mapping, classes=None) -> dict:
    """Fig. 7, one model: the numbers of every block's spectrum and of the whole
    model's, with two checks the maths guarantees for diagonal blocks A_BB of A:

    * the blocks partition the parameters: Σ_B n_B = n (``params_partition``), so
      Σ_B tr A_BB = tr A (the traces of the stochastic estimates, compared);
    * Cauchy interlacing: λ_min(A) ≤ λ_min(A_BB) and λ_max(A_BB) ≤ λ_max(A), checked on
      the extreme Ritz values with a slack of ``INTERLACING_SLACK`` × A's width."""
    spectra, _ = blocks
    whole_numbers = spectrum_numbers(*whole, paths["whole"], classes)
    low, high = extremes(*whole)
    slack = INTERLACING_SLACK * (high - low)
    results = {}
    for name, (arrays, attrs) in spectra.items():
        lo, hi = extremes(arrays, attrs)
        results[name] = {
            **spectrum_numbers(arrays, attrs, f"{paths['blocks']}/{name}", classes),
            "trace": trace(arrays, attrs),
            "extremes": [lo, hi],
            "interlaced": bool(low - slack <= lo and hi <= high + slack),
            "param_names": list(attrs.get("param_names") or []),
        }
    block_trace = sum(r["trace"] for r in results.values())
    whole_trace = trace(*whole)
    return {
        "whole": {**whole_numbers, "trace": whole_trace, "extremes": [low, high]},
        "blocks": results,
        "params_partition": sum(r["n_params"] for r in results.values())
        == whole_numbers["n_params"],
        "trace_of_blocks": block_trace,
        "trace_relative_difference": abs(block_trace - whole_trace) / max(abs(whole_trace), 1e-300),
        "all_interlaced": all(r["interlaced"] for r in results.values()),
    }


def blocks_numbers(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 7: :func:`blocks_panel` per model; ``loaded`` and ``paths`` map a panel label
    to ``{"blocks": ..., "whole": ...}``."""
    return {
        "figure": "fig7",
        "panels": {
            label: blocks_panel(
                loaded[label]["blocks"], loaded[label]["whole"], paths[label], classes
            )
            for label in loaded
        },
    }


def blocks_summary_lines(numbers: Mapping) -> list[str]:
    """What Fig. 7's numbers say, in words (what its notebook prints)."""
    lines = []
    for label, panel in numbers["panels"].items():
        lines += [f"[{label}]", summary("whole model", panel["whole"])]
        for name, block in panel["blocks"].items():
            lines.append(
                summary(f"block {name} ({block['n_params']} parameters)", block)
                + f"; largest {block['extremes'][1]:.4g}; interlaced: {block['interlaced']}"
            )
        lines += [
            f"blocks partition the parameters: {panel['params_partition']}",
            f"trace: whole {panel['whole']['trace']:.4g}, sum over blocks "
            f"{panel['trace_of_blocks']:.4g} (relative difference "
            f"{panel['trace_relative_difference']:.2e}; both stochastic estimates)",
        ]
    return lines
