"""The numbers the figures' captions quote, from stored spectra.

Conventions (as in the paper): eigenvalues are denormalized (λ itself); the bulk's edges
are quantiles of its quadrature without the separated outliers.

How many outliers there are is counted two ways. The primary count is
``outliers_explained``: of the top C eigenvalues of the deflated operator (the outliers
the spectrum job found or computed), how many are matched by the eigenvalues of G1, the
class means of the gradients (Papyan 2019, 2020), the k-th largest against the k-th, to a
relative error of at most ``explained_rtol`` (10%, :data:`hspec.curvature.attribution.EXPLAINED_RTOL`),
with every relative error given (:func:`attribution_numbers`; G0 + G1 + G2, all the class
means, second). The secondary count ``gap_heuristic_outliers`` is a density-gap
heuristic: the Ritz values that lie above the bulk's smoothed density (:func:`separated`).

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
import scipy.stats
import torch

from hspec.atomic import write_json
from hspec.errors import HspecError
from hspec.numerics import analysis, claims
from hspec.numerics.density import log_density, smoothing_width
from hspec.numerics.provenance import environment, utc_now
from hspec.numerics.spectrum import pointwise_band
from hspec.pipeline.store import as_result, attribution_of

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
    return analysis.bulk_edges(*bulk_quadrature(arrays, attrs, outliers), quantiles)


def bulk_quadrature(arrays: Mapping, attrs: Mapping, outliers=None) -> tuple[np.ndarray, ...]:
    """(nodes, weights) of the bulk: the Ritz quadrature (KPM: the density's grid cells)
    below the separated outliers (``outliers``, by default :func:`separated`)."""
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
    return nodes, weights


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


# the automatic range's rule, in the caption's words (the fit's: claims.TAIL_RULE)
AUTO_FIT_RULE = claims.TAIL_RULE.replace("{top:g}", f"{claims.TAIL_TOP:g}")


def fit_tail(
    arrays: Mapping,
    attrs: Mapping,
    sign: int = 1,
    fit_range=None,
    *,
    span: float = 1.0,
    decades: float = 8.0,
) -> dict:
    """Power law φ = a·|λ|^(−b) of the density of |λ| over one sign:
    :func:`hspec.numerics.claims.tail_exponent` (b with its interval, on ``fit_range`` =
    [lo, hi] or, if None, on the range of its rule ``claims.TAIL_RULE``) and the R² of
    that line against :func:`log_tail`'s density there. Returns a, b, interval, r2,
    points, lo, hi, sign, rule, …; on failure ``{"error": message, "sign", "rule"}``."""
    rule = "given" if fit_range is not None else AUTO_FIT_RULE.format(span=span)
    try:
        fit = claims.tail_exponent(
            *atoms(arrays, attrs),
            int(attrs["n_params"]),
            sign=sign,
            span=span,
            n_vec=int(_settings(attrs).get("n_vec", 1)),
            fit_range=fit_range,
        )
        x, phi = log_tail(arrays, attrs, sign, decades=decades)
        r2, points = analysis.power_law_r2(x, phi, fit["a"], fit["b"], fit["lo"], fit["hi"])
    except HspecError as error:
        return {"error": str(error), "sign": sign, "rule": rule}
    return {**fit, "r2": r2, "points": points}


# ------------------------------------------------------------------- errors and origin

BAND_LEVEL = 0.9  # the level of every band and interval the figures show
# the band's relative width is summarised where the density is above this × its peak
# (the top three of the eight decades drawn: the mass at zero alone would be 5 %)
BAND_SUPPORT = 1e-3
RESAMPLES = 200  # bootstrap resamples of the runs, for the derived numbers
ERROR_RULE = (
    "errors across the n_vec Lanczos runs (each run, its own start vector, is a complete "
    "estimate of the spectrum: its Ritz quadrature with the same deflated outliers): a "
    "derived number's value is the pooled result's; its standard error is the jackknife "
    "one, from the number recomputed on the runs with one left out; its t interval is "
    "value ± t(n_vec − 1)·standard error; its bootstrap interval the percentile interval "
    "of the number recomputed on {resamples} resamplings of the runs with replacement; "
    "'runs' gives it on each run alone; level {level:g}"
)


def n_runs(arrays: Mapping) -> int:
    """The Lanczos runs stored apart (the ``runs`` index of the nodes); 1 for a group
    without a run index (KPM, or written before runs were kept)."""
    runs, nodes = np.asarray(arrays.get("runs", [])), np.asarray(arrays["nodes"])
    if runs.size == 0 or runs.size != nodes.size:
        return 1
    return int(runs.max()) + 1


def density_band(arrays: Mapping, attrs: Mapping, level: float = BAND_LEVEL):
    """(grid, lower, upper): :meth:`hspec.numerics.spectrum.SpectralDensity.band` of the
    stored result (the t band across runs), or None with fewer than two runs."""
    if n_runs(arrays) < 2:
        return None
    return as_result(arrays, attrs).band(level)


def log_tail_band(
    arrays: Mapping,
    attrs: Mapping,
    sign: int = 1,
    *,
    decades: float = 8.0,
    level: float = BAND_LEVEL,
):
    """(|λ|, lower, upper): a pointwise ``level`` band of :func:`log_tail` across the
    Lanczos runs, or None with fewer than two runs. Each run's curve (:func:`log_tail`
    of :func:`run_arrays`; zero where the run has no eigenvalue of that sign) is
    interpolated linearly in log10|λ| onto the pooled curve's grid, then
    :func:`hspec.numerics.spectrum.pointwise_band` (t) of the curves."""
    n = n_runs(arrays)
    if n < 2:
        return None
    x, _ = log_tail(arrays, attrs, sign, decades=decades)
    curves = []
    for run in range(n):
        try:
            xr, phir = log_tail(run_arrays(arrays, run), attrs, sign, decades=decades)
        except HspecError:  # no eigenvalue of that sign in this run
            xr, phir = x, np.zeros_like(x)
        curves.append(np.interp(np.log10(x), np.log10(xr), phir, left=0.0, right=0.0))
    return (x, *pointwise_band(curves, level))


def pool_arrays(arrays: Mapping, runs) -> dict:
    """The arrays of the Lanczos runs ``runs`` (indices, repeats allowed), pooled as a
    spectrum of their own: their nodes, the weights × n_vec / len(runs) (each run's
    quadrature carries the pooled mass), the deflated outliers shared; the smoothed
    ``density`` stays the pooled one."""
    n, index = n_runs(arrays), np.asarray(arrays["runs"])
    picks = [np.flatnonzero(index == run) for run in runs]
    keep = np.concatenate(picks)
    return {
        **arrays,
        "nodes": np.asarray(arrays["nodes"])[keep],
        "weights": np.asarray(arrays["weights"])[keep] * n / len(picks),
        "runs": np.repeat(np.arange(len(picks)), [len(p) for p in picks]),
    }


def run_arrays(arrays: Mapping, run: int) -> dict:
    """The arrays of Lanczos run ``run`` alone (:func:`pool_arrays` of it)."""
    return pool_arrays(arrays, [run])


def resampled(
    statistic, arrays: Mapping, level: float = BAND_LEVEL, resamples: int = RESAMPLES, seed=0
) -> list[dict]:
    """The error across runs of a derived number, as ``ERROR_RULE`` says: ``statistic``
    maps spectrum arrays to a vector of numbers (e.g. the two bulk edges); it is
    computed on the pooled runs, on each run alone, on the runs with one left out
    (jackknife: SE² = (n − 1)/n · Σ (θ₍ᵢ₎ − θ̄₍·₎)²) and on ``resamples`` resamplings
    of the runs with replacement (seeded by ``seed``; a repeated multiset is computed
    once). One dict per entry of the vector: value, runs, standard_error, interval_t,
    interval_bootstrap, level. Needs n_vec ≥ 2."""
    n, cache = n_runs(arrays), {}

    def at(selection) -> np.ndarray:
        key = tuple(sorted(int(run) for run in selection))
        if key not in cache:
            cache[key] = np.atleast_1d(np.asarray(statistic(pool_arrays(arrays, key)), float))
        return cache[key]

    value = at(range(n))
    singles = np.array([at([run]) for run in range(n)])
    left_out = np.array([at([run for run in range(n) if run != out]) for out in range(n)])
    error = np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean(axis=0)) ** 2, axis=0))
    half = scipy.stats.t.ppf((1 + level) / 2, n - 1) * error
    rng = np.random.default_rng(seed)
    boot = np.array([at(rng.integers(0, n, n)) for _ in range(resamples)])
    lower, upper = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [
        {
            "value": float(value[i]),
            "runs": singles[:, i].tolist(),
            "standard_error": float(error[i]),
            "interval_t": [float(value[i] - half[i]), float(value[i] + half[i])],
            "interval_bootstrap": [float(lower[i]), float(upper[i])],
            "level": level,
        }
        for i in range(value.size)
    ]


def band_width(arrays: Mapping, attrs: Mapping, level: float = BAND_LEVEL) -> dict | None:
    """The ``level`` band of the density in one number: the median and largest of
    (upper − lower) / density over the grid points where the density is above
    ``BAND_SUPPORT`` × its peak; None with fewer than two runs."""
    band = density_band(arrays, attrs, level)
    if band is None:
        return None
    _, lower, upper = band
    density = np.asarray(arrays["density"])
    bulk = density > BAND_SUPPORT * density.max()
    relative = (upper - lower)[bulk] / density[bulk]
    return {
        "level": level,
        "method": "t",
        "runs": n_runs(arrays),
        "median_relative_width": float(np.median(relative)),
        "max_relative_width": float(relative.max()),
        "support": f"density > {BAND_SUPPORT:g} × its maximum",
    }


def run_errors(arrays: Mapping, attrs: Mapping, level: float = BAND_LEVEL) -> dict | None:
    """:func:`resampled` errors of the derived numbers of one spectrum: the bulk edges,
    the asymmetry and the number of separated outliers; None with fewer than two runs.
    (The power-law exponent is in :func:`fit_errors`, on the figure that fits it.)"""
    n = n_runs(arrays)
    if n < 2:
        return None
    errors = {
        "n_vec": n,
        "rule": ERROR_RULE.format(level=level, resamples=RESAMPLES),
        "asymmetry": resampled(lambda a: asymmetry(a, attrs), arrays, level)[0],
        "gap_heuristic_outliers": resampled(lambda a: separated(a, attrs).size, arrays, level)[0],
    }
    try:
        errors["bulk_edges"] = resampled(lambda a: bulk_edges(a, attrs), arrays, level)
    except HspecError as error:
        errors["bulk_edges"] = {"error": str(error)}
    return errors


def outlier_certificates(arrays: Mapping, attrs: Mapping) -> list[dict]:
    """Each deflated outlier θ with its true residual r = ‖A x − θ x‖, the interval
    [θ − r, θ + r] that provably holds an eigenvalue, the sharper gap-based error bound
    and its ``converged`` flag (:mod:`hspec.numerics.certify`); empty for a group
    without residuals (no deflation, or written before they were stored)."""
    if "residuals" not in arrays or len(arrays["residuals"]) != len(arrays["outliers"]):
        return []
    result = as_result(arrays, attrs)
    lower, upper = result.outlier_intervals()
    return [
        {
            "value": float(value),
            "residual": float(residual),
            "interval": [float(lo), float(hi)],
            "error_bound": float(bound),
            "converged": bool(done),
        }
        for value, residual, lo, hi, bound, done in zip(
            result.outliers, result.residuals, lower, upper, result.error_bounds, result.converged
        )
    ]


def unconverged(arrays: Mapping) -> np.ndarray:
    """The deflated outliers flagged unconverged (:mod:`hspec.numerics.certify`); none for
    a group without flags."""
    outliers = np.asarray(arrays["outliers"], dtype=float)
    flags = np.asarray(arrays.get("converged", []), dtype=bool)
    return outliers[~flags] if flags.size == outliers.size else np.empty(0)


def measured(arrays: Mapping, attrs: Mapping) -> dict:
    """The error and origin of one spectrum's numbers: n_vec, the density's band
    (:func:`band_width`), the derived numbers' spread across runs (:func:`run_errors`),
    the outliers' certificates and the unconverged ones among them, and the stored
    provenance (code, software, device, host, times, model sha256, training settings)."""
    certificates = outlier_certificates(arrays, attrs)
    return {
        "n_vec": n_runs(arrays),
        "band": band_width(arrays, attrs),
        "errors": run_errors(arrays, attrs),
        "outlier_certificates": certificates,
        "unconverged_outliers": [c["value"] for c in certificates if not c["converged"]],
        "provenance": dict(attrs.get("provenance") or {}),
    }


def figure_provenance() -> dict:
    """Where the figure's numbers were computed: this process's code, software and
    machine (:func:`hspec.numerics.provenance.environment`; the figures compute on the
    CPU) and the time, UTC."""
    return {**environment(torch.device("cpu")), "written": utc_now()}


def figure_origin() -> dict:
    """What every figure's numbers carry besides its spectra's: the figure's
    provenance (:func:`figure_provenance`), the level of its bands and intervals and how
    errors across runs are computed (``ERROR_RULE``)."""
    return {
        "figure_provenance": figure_provenance(),
        "band_level": BAND_LEVEL,
        "error_rule": ERROR_RULE.format(level=BAND_LEVEL, resamples=RESAMPLES),
    }


def fit_errors(arrays: Mapping, attrs: Mapping, fit: Mapping, level: float = BAND_LEVEL):
    """The power law's exponent b with its :func:`resampled` error: :func:`fit_tail` on
    the pooled fit's range, of the runs pooled, alone, left out and resampled; None with
    fewer than two runs or when the pooled fit failed, ``{"error": …}`` when a fit on
    some runs fails. The range is held fixed, so this is the error of the exponent for
    that range (the range rule's own variation is not in it)."""
    if n_runs(arrays) < 2 or "error" in fit:
        return None

    def exponent(pooled):
        refit = fit_tail(pooled, attrs, fit["sign"], (fit["lo"], fit["hi"]))
        if "error" in refit:
            raise HspecError(refit["error"])
        return refit["b"]

    try:
        b = resampled(exponent, arrays, level)[0]
    except HspecError as error:
        return {"error": f"the fit on some of the runs failed: {error}"}
    return {"b": b, "range": [fit["lo"], fit["hi"]]}


def spectra_of(numbers: Mapping, label: str = "") -> list[tuple[str, Mapping]]:
    """Every spectrum's numbers (:func:`spectrum_numbers`) inside a figure's numbers,
    with the keys leading to it joined by '/' as its label, in order."""
    if "outlier_certificates" in numbers:
        return [(label, numbers)]
    return [
        found
        for key, value in numbers.items()
        if isinstance(value, Mapping)
        for found in spectra_of(value, f"{label}/{key}" if label else str(key))
    ]


def _error(number: Mapping) -> str:
    return f"{number['value']:.4g} ± {number['standard_error']:.2g}"


def error_lines(label: str, numbers: Mapping) -> list[str]:
    """One spectrum's errors in words: its band and the spread of its derived numbers
    across runs (or that one run gives none), its certified outliers and the unconverged
    ones among them."""
    band, errors = numbers["band"], numbers["errors"]
    if band is None:
        lines = [f"{label}: one Lanczos run (n_vec = 1): no band, no error across runs"]
    else:
        edges = errors["bulk_edges"]
        edges = f"[{_error(edges[0])}, {_error(edges[1])}]" if isinstance(edges, list) else "n/a"
        lines = [
            f"{label}: {band['runs']} runs; {band['level']:.0%} band of the density: "
            f"median relative width {band['median_relative_width']:.2g} where it is above "
            f"{BAND_SUPPORT:g} × its peak; "
            f"bulk edges {edges}; asymmetry {_error(errors['asymmetry'])}; "
            f"gap-heuristic outliers per run {[int(v) for v in errors['gap_heuristic_outliers']['runs']]} "
            "(value ± jackknife standard error across runs)"
        ]
    certificates = numbers["outlier_certificates"]
    if certificates:
        worst = max(c["residual"] / max(abs(c["value"]), 1e-300) for c in certificates)
        unconverged = numbers["unconverged_outliers"]
        lines.append(
            f"{label}: {len(certificates)} deflated outliers, each within its residual of "
            f"an eigenvalue (largest relative residual {worst:.2g}); "
            + (
                f"{len(unconverged)} unconverged: {[round(v, 4) for v in unconverged]}"
                if unconverged
                else "all converged"
            )
        )
    return lines


def origin_lines(numbers: Mapping) -> list[str]:
    """Where a figure's numbers come from: the code and machine of its spectra (each
    distinct one once) and of the figure."""
    seen = []
    for _, values in spectra_of(numbers):
        origin = values["provenance"]
        if not origin:
            line = "spectra: no provenance stored (written by an hspec that did not record it)"
        else:
            line = (
                f"spectra: hspec {origin.get('hspec_version')} (commit "
                f"{str(origin.get('git_commit'))[:12]}{', dirty' if origin.get('git_dirty') else ''}), "
                f"torch {origin.get('torch')}, on {origin.get('device')} ({origin.get('host')})"
            )
        if line not in seen:
            seen.append(line)
    figure = numbers.get("figure_provenance", {})
    return seen + [
        f"figure: hspec {figure.get('hspec_version')} (commit "
        f"{str(figure.get('git_commit'))[:12]}), written {figure.get('written')}"
    ]


def _fit_error_line(sign, errors) -> list[str]:
    if errors is None or "error" in errors:
        return []
    b = errors["b"]
    return [
        f"exponent on {sign} across runs: b = {_error(b)}, "
        f"{b['level']:.0%} t interval [{b['interval_t'][0]:.3g}, {b['interval_t'][1]:.3g}] "
        "(range held at the pooled fit's)"
    ]


# ----------------------------------------------------------------- the paper's claims


def _claim(measure, *args) -> dict:
    """``measure(*args)``, or ``{"error": …}`` where the spectra cannot give it."""
    try:
        return measure(*args)
    except HspecError as error:
        return {"error": str(error)}


def bulk_law(arrays: Mapping, attrs: Mapping) -> dict:
    """Is the bulk Marchenko–Pastur or heavy-tailed: :func:`hspec.numerics.claims.bulk_law`
    of the bulk's quadrature without the separated outliers (:func:`bulk_quadrature`)."""
    return _claim(lambda: claims.bulk_law(*bulk_quadrature(arrays, attrs)))


def symmetry(arrays: Mapping, attrs: Mapping) -> dict:
    """R's symmetry about 0 with its errors across runs: :func:`hspec.numerics.claims.symmetry`
    of the stored result."""
    return _claim(lambda: claims.symmetry(as_result(arrays, attrs)))


def magnitude_ratio(train, test) -> dict:
    """How much smaller the test Hessian is than the train one:
    :func:`hspec.numerics.claims.magnitude_ratio` of the stored (arrays, attrs) pairs."""
    return _claim(lambda: claims.magnitude_ratio(as_result(*train), as_result(*test)))


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


#: the parts of G whose eigenvalues a figure's numbers list (the first C of each)
CLASS_PARTS = {"class_g0": "G0", "class_g1": "G1", "class_g2": "G2", "class_g1_g2": "G1+G2"}


def attribution_numbers(arrays: Mapping, attrs: Mapping) -> dict:
    """The class-structure attribution stored with a spectrum, as a caption quotes it: the
    primary count ``outliers_explained`` (by G1, see the module docstring) and
    ``outliers_explained_g0_g1_g2``, their relative errors, the outliers they are matched
    against and where those come from, the top C eigenvalues of G0, G1, G2 and G1 + G2,
    the shares of tr G; every value None for a spectrum stored without it."""
    found = attribution_of(arrays, attrs)
    if found is None:
        keys = ("outliers_explained", "outliers_explained_g0_g1_g2", "explained_rtol")
        keys += ("explained_relative_errors", "attribution_outliers", "outlier_source")
        return {key: None for key in keys + ("class_eigenvalues", "trace_shares")}
    C = found["num_classes"]
    return {
        "outliers_explained": int(found["explained"]["class_g1"]),
        "outliers_explained_g0_g1_g2": int(found["explained"]["class_g0_g1_g2"]),
        "explained_rtol": float(found["rtol"]),
        "explained_relative_errors": {
            part: [float(v) for v in errors] for part, errors in found["relative_errors"].items()
        },
        "attribution_outliers": [float(v) for v in found["outliers"]],
        "outlier_source": found["outlier_source"],
        "class_eigenvalues": {
            part: [float(v) for v in found["values"][part][:C]] for part in CLASS_PARTS
        },
        "trace_shares": {key: float(v) for key, v in found["trace_shares"].items()},
    }


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
        **attribution_numbers(arrays, attrs),
        "gap_heuristic_outliers": int(found.size),
        "gap_heuristic_equals_classes": None if C is None else bool(found.size == C),
        "separated_outliers": [float(v) for v in found],
        "deflated_outliers": [float(v) for v in np.asarray(arrays["outliers"])],
        "bulk_edges": edges,
        "lambda_min": float(attrs["lambda_min"]),
        "lambda_max": float(attrs["lambda_max"]),
        "hvp_count": int(attrs["hvp_count"]),
        "asymmetry": float(asymmetry(arrays, attrs)),
        **measured(arrays, attrs),
    }


def summary(label, numbers: Mapping) -> str:
    """One line with the measured numbers of a spectrum."""
    edges = numbers["bulk_edges"]
    edges = "n/a" if edges is None else f"[{edges[0]:.4g}, {edges[1]:.4g}]"
    equal = numbers["gap_heuristic_equals_classes"]
    verdict = "" if equal is None else ("; equals C" if equal else "; differs from C")
    return (
        f"{label}: {explained_phrase(numbers)}; gap-heuristic outliers: "
        f"{numbers['gap_heuristic_outliers']} "
        f"(classes: {numbers['num_classes']}{verdict}); bulk edges {edges}; "
        f"range [{numbers['lambda_min']:.4g}, {numbers['lambda_max']:.4g}]; "
        f"{numbers['hvp_count']} products"
    )


def explained_phrase(numbers: Mapping) -> str:
    """The primary outlier count in words, with the largest relative error."""
    if numbers.get("outliers_explained") is None:
        return "outliers explained by the class means: n/a (no attribution stored)"
    errors = numbers["explained_relative_errors"]
    worst = {part: max(values, default=float("nan")) for part, values in errors.items()}
    return (
        f"outliers explained by the class means (G1, within "
        f"{numbers['explained_rtol']:.0%}): {numbers['outliers_explained']} of "
        f"{len(numbers['attribution_outliers'])} (max rel. err {worst['class_g1']:.2g}; "
        f"G0+G1+G2: {numbers['outliers_explained_g0_g1_g2']}, "
        f"max rel. err {worst['class_g0_g1_g2']:.2g})"
    )


def write_numbers(numbers: Mapping, path) -> Path:
    """Write a figure's numbers as JSON (sorted keys, indented), atomically."""
    return write_json(path, numbers)


# -------------------------------------------------------------------------- per figure


def _largest(pairs) -> float | None:
    return max((p["relative_difference"] for p in pairs), default=None)


def hessian_numbers(
    fig: str, loaded: Mapping, paths: Mapping, classes=None, train: Mapping | None = None
) -> dict:
    """Figs. 1–2: :func:`spectrum_numbers` of every panel's Hessian, its :func:`bulk_law`
    and, given the train Hessians of the same models (``train``, by label; Fig. 2), the
    test/train :func:`magnitude_ratio`."""
    claimed = {"bulk_law": {label: bulk_law(*loaded[label]) for label in loaded}}
    if train is not None:
        claimed["magnitude_ratio"] = {
            label: magnitude_ratio(train[label], loaded[label]) for label in loaded
        }
    return {
        **claimed,
        "figure": fig,
        "split": "train" if fig == "fig1" else "test",
        "component": "hessian",
        **figure_origin(),
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
        **figure_origin(),
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
    log variant (with the exponent's error across runs, :func:`fit_errors`), its
    asymmetry and :func:`symmetry`, the :func:`bulk_law` of H and G, and the zoom range
    of (c)."""
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
    negative = fit_tail(*log_loaded[tail], -1, fit_range)
    reference, zoom = zoom_range(loaded)
    return {
        "spectra": results,
        "log_spectra": log_results,
        "fit": fit,
        "fit_negative": negative,
        "fit_errors": fit_errors(*log_loaded[tail], fit),
        "symmetry": symmetry(*log_loaded[tail]),
        "bulk_law": {
            c: bulk_law(*loaded[c]) for c in components if c in ("hessian", "gradient_covariance")
        },
        "fit_negative_errors": fit_errors(*log_loaded[tail], negative),
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
        **figure_origin(),
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
    split, in order of the size, ``explained_by_size``: ``[key, examples per class,
    outliers explained by G1, by G0 + G1 + G2]`` (None without an attribution) and
    ``gap_heuristic_by_size``: ``[key, examples per class, gap-heuristic outliers]``."""
    sizes = curve_sizes(splits, classes)
    results, trend, explained = {}, {}, {}
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
            [str(key), sizes[split][key], results[split][str(key)]["gap_heuristic_outliers"]]
            for key in order
        ]
        explained[split] = [
            [str(key), sizes[split][key]]
            + [results[split][str(key)][name] for name in EXPLAINED_KEYS]
            for key in order
        ]
    return {"spectra": results, "explained_by_size": explained, "gap_heuristic_by_size": trend}


EXPLAINED_KEYS = ("outliers_explained", "outliers_explained_g0_g1_g2")


def _median(values) -> float | None:
    return None if not values else float(np.median(values))


def class_structure_numbers(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 6: per dataset :func:`sample_size_panel` (the spectra of Fig. 5 with their
    attribution), ``largest`` (per split, the key of the largest size: the spectrum
    drawn), ``relative_error_by_size`` (per split, ``[key, examples per class, median
    relative error of G1's matches, of G0 + G1 + G2's]``, None without an attribution)."""
    panels = {}
    for label in loaded:
        panel = sample_size_panel(loaded[label], paths[label], classes)
        errors, largest = {}, {}
        for split, rows in panel["explained_by_size"].items():
            spectra = panel["spectra"][split]
            largest[split] = rows[-1][0]
            errors[split] = [
                [key, size]
                + [
                    _median((spectra[key]["explained_relative_errors"] or {}).get(part))
                    for part in ("class_g1", "class_g0_g1_g2")
                ]
                for key, size, *_ in rows
            ]
        panels[label] = {**panel, "largest": largest, "relative_error_by_size": errors}
    return {"figure": "fig6", "component": "gradient_covariance", "panels": panels}


def class_structure_verdict(numbers: Mapping) -> list[str]:
    """Fig. 6 in plain words, per dataset and split: whether the top C eigenvalues of G are
    G1's at the largest size (how many within the tolerance, the median relative error),
    and whether the number explained grows with the sample size."""
    lines = []
    for label, panel in numbers["panels"].items():
        for split, rows in panel["explained_by_size"].items():
            key = panel["largest"][split]
            values = panel["spectra"][split][key]
            if values["outliers_explained"] is None:
                lines.append(f"{label}, {split}: no attribution stored; nothing to say")
                continue
            C = len(values["attribution_outliers"])
            median = _median(values["explained_relative_errors"]["class_g1"])
            verdict = "are" if values["outliers_explained"] == C else "are not"
            counts = [row[2] for row in rows]
            grows = (
                "grows" if counts[-1] > counts[0] and _non_decreasing(counts) else "does not grow"
            )
            lines.append(
                f"{label}, {split}, {key}/class: the top {C} eigenvalues of G {verdict} G1's: "
                f"{values['outliers_explained']} of {C} within "
                f"{values['explained_rtol']:.0%}, median relative error {median:.2g}; the "
                f"number explained {grows} with the sample size ({counts})"
            )
    return lines


def trace_share_line(values: Mapping) -> str:
    """The shares of tr G in G0, G1, G2 and G_within, in words."""
    shares = values.get("trace_shares")
    if shares is None:
        return "shares of tr G: n/a (no attribution stored)"
    names = {"class_g0": "G0", "class_g1": "G1", "class_g2": "G2", "class_within": "G_within"}
    return "shares of tr G: " + ", ".join(f"{n} {shares[k]:.3f}" for k, n in names.items())


def sample_size_numbers(loaded: Mapping, paths: Mapping, classes=None) -> dict:
    """Fig. 5: :func:`sample_size_panel` per dataset."""
    return {
        "figure": "fig5",
        "component": "gradient_covariance",
        **figure_origin(),
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
        f"power law on {sign}: phi = {fit['a']:.3g} |lambda|^-{fit['b']:.3f} "
        f"(b in [{fit['interval'][0]:.3f}, {fit['interval'][1]:.3f}] at {fit['level']:.0%}), "
        f"R^2 = {fit['r2']:.3f}, on |lambda| in [{fit['lo']:.3g}, {fit['hi']:.3g}] "
        f"({fit['points']} grid points)"
    )


def _non_decreasing(counts) -> bool | None:
    if any(count is None for count in counts):
        return None
    return all(a <= b for a, b in zip(counts, counts[1:]))


def size_lines(panel: Mapping) -> list[str]:
    """Figs. 5–6, one dataset: each curve's summary, then both outlier counts in order of
    the sample size (primary: explained by G1; secondary: the gap heuristic)."""
    lines = []
    for split, trend in panel["gap_heuristic_by_size"].items():
        lines.append(f"{split}:")
        lines += [
            "  " + summary(f"{key}/class", panel["spectra"][split][key]) for key, _, _ in trend
        ]
        explained = [row[2] for row in panel["explained_by_size"][split]]
        counts = [count for _, _, count in trend]
        lines += [
            f"  outliers explained by G1, in order of sample size: {explained}; "
            f"non-decreasing: {_non_decreasing(explained)}",
            f"  gap-heuristic outliers, in order of sample size: {counts}; "
            f"non-decreasing: {_non_decreasing(counts)}",
        ]
    return lines


def summary_lines(numbers: Mapping) -> list[str]:
    """What a figure's numbers say, in words (what its notebook prints): the measured
    numbers (:func:`measured_lines`), then their errors and origin (:func:`error_lines`
    of every spectrum, the exponent's error across runs of Fig. 4, :func:`origin_lines`)."""
    lines = ["errors and origin:"]
    for label, values in spectra_of(numbers):
        lines += ["  " + line for line in error_lines(label, values)]
    for label, panel in numbers.get("panels", {}).items():
        for sign, key in (("lambda > 0", "fit_errors"), ("lambda < 0", "fit_negative_errors")):
            lines += [f"  {label}: {line}" for line in _fit_error_line(sign, panel.get(key))]
    lines += ["  " + line for line in origin_lines(numbers)]
    return measured_lines(numbers) + ["the paper's claims:", *claim_lines(numbers)] + lines


def claim_lines(numbers: Mapping) -> list[str]:
    """The paper's claims as measured in a figure's numbers, in words: the bulk law of
    each spectrum that has one, R's symmetry and the test/train magnitude ratio."""
    lines = []
    for label, found in claims_of(numbers, "bulk_law"):
        lines.append(f"  bulk of {label}: {bulk_law_phrase(found)}")
    for label, found in claims_of(numbers, "symmetry"):
        lines.append(f"  symmetry of {label}: {symmetry_phrase(found)}")
    for label, found in claims_of(numbers, "magnitude_ratio"):
        lines.append(f"  test/train magnitude of {label}: {ratio_phrase(found)}")
    return lines


def claims_of(numbers: Mapping, key: str, label: str = "") -> list[tuple[str, Mapping]]:
    """Every (label, claim) stored under ``key`` in a figure's numbers: a mapping of labels
    to claims (``bulk_law``, ``magnitude_ratio``) or one claim (a panel's ``symmetry``),
    the label the keys leading to it."""
    found = []
    for name, value in numbers.items():
        if not isinstance(value, Mapping):
            continue
        where = f"{label}/{name}" if label else str(name)
        if name != key:
            found += claims_of(value, key, where)
        elif key == "symmetry":
            found.append((label, value))
        else:
            found += [(f"{label}/{k}" if label else k, v) for k, v in value.items()]
    return found


def _pm(value, error, digits: int = 3) -> str:
    return f"{value:.{digits}g}" + ("" if error is None else f" ± {error:.2g}")


def bulk_law_phrase(found: Mapping) -> str:
    """:func:`bulk_law` in words: the verdict and both fits' W1 distances."""
    if "error" in found:
        return f"no fit ({found['error']})"
    mp, heavy = found["marchenko_pastur"], found["frechet"]
    return (
        f"{found['preferred']} (W1 relative to E|lambda|: Marchenko-Pastur "
        f"{mp['w1_relative']:.3g}, ratio {mp['ratio']:.3g}; Frechet {heavy['w1_relative']:.3g}, "
        f"alpha {heavy['alpha']:.3g}; KS {mp['ks']:.3g} vs {heavy['ks']:.3g})"
    )


def symmetry_phrase(found: Mapping) -> str:
    """:func:`symmetry` in words: the asymmetry with its error and interval."""
    if "error" in found:
        return f"n/a ({found['error']})"
    interval = found["interval"]
    return (
        f"asymmetry {_pm(found['asymmetry'], found['standard_error'])} over "
        f"{found['n_vec']} run(s)"
        + (
            ""
            if interval is None
            else f", {found['level']:.0%} bootstrap interval [{interval[0]:.3g}, {interval[1]:.3g}]"
        )
        + " (0: symmetric about 0, 1: one-signed)"
    )


def ratio_phrase(found: Mapping) -> str:
    """:func:`magnitude_ratio` in words: the test/train ratios of the top, mean and rms."""
    if "error" in found:
        return f"n/a ({found['error']})"
    return "; ".join(
        f"{name} {_pm(found[key]['ratio'], found[key]['standard_error'])}"
        for name, key in (("top eigenvalue", "top"), ("mean", "mean"), ("rms", "rms"))
    )


def measured_lines(numbers: Mapping) -> list[str]:
    """What a figure's numbers say, in words (what its notebook prints)."""
    fig, lines = numbers["figure"], []
    if fig in ("fig1", "fig2"):
        for label, values in numbers["spectra"].items():
            lines += [
                summary(label, values),
                "   gap-heuristic (separated) outliers: "
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
        elif fig in ("fig5", "fig6"):
            lines += size_lines(panel)
        if fig == "fig6":
            for split, key in panel["largest"].items():
                lines.append(
                    f"{split}, {key}/class: " + trace_share_line(panel["spectra"][split][key])
                )
            for split, rows in panel["relative_error_by_size"].items():
                lines.append(
                    f"{split}: median relative error of G1's matches by size: "
                    + str([[key, None if e is None else round(e, 3)] for key, _, e, _ in rows])
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
