"""The paper's claims as numbers, each with its error and the method that measured it.

Model-agnostic (layer 1): every function works on a spectral measure given as weighted
atoms (Ritz nodes and weights of :func:`hspec.numerics.spectrum.spectral_density`, or
exact eigenvalues with equal masses), or on a result with the attributes ``nodes``,
``weights``, ``runs``, ``outliers`` and ``dim`` (a ``SpectralDensity``, also as read back
by ``hspec.pipeline.store.read_result``). Each returns a JSON-able dict.

* :func:`bulk_law` — the bulk is Marchenko–Pastur or heavier-tailed (paper Section 4):
  the best MP law and the best Fréchet law (a power-law tail), both fitted by Wasserstein-1, their
  distances and the verdict.
* :func:`symmetry` — R is "almost perfectly symmetric" (Fig. 4d): the asymmetry of
  :func:`hspec.numerics.analysis.asymmetry` with its standard error across the Lanczos
  runs and a bootstrap interval.
* :func:`tail_exponent` — the power law φ ∝ |λ|^(−b) of Fig. 4d: the maximum-likelihood
  exponent of a truncated power law on a fit range chosen by a rule that does not depend
  on the number of Lanczos steps, with a confidence interval.
* :func:`magnitude_ratio` — the test Hessian is smaller than the train one (Fig. 2):
  ratios of the top eigenvalue, of the mean eigenvalue (trace/dim) and of the root mean
  square eigenvalue (‖A‖_F/√dim), with errors across runs.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.stats

from hspec.errors import HspecError
from hspec.numerics.analysis import asymmetry

QUANTILES = 4096  # midpoints u_i of (0, 1) on which quantile functions are compared


def _measure(values, masses) -> tuple[np.ndarray, np.ndarray]:
    """Atoms sorted ascending with masses normalized to 1 (positive masses only)."""
    values, masses = np.asarray(values, float), np.asarray(masses, float)
    if values.shape != masses.shape or values.size == 0:
        raise HspecError("measure: needs as many masses as values, and at least one")
    keep = masses > 0
    order = np.argsort(values[keep])
    values, masses = values[keep][order], masses[keep][order]
    return values, masses / masses.sum()


def _quantiles(values, masses, u: np.ndarray) -> np.ndarray:
    """The quantile function F⁻¹(u) = min{x: F(x) ≥ u} of a sorted, normalized measure."""
    index = np.searchsorted(np.cumsum(masses), u, side="left")
    return values[np.minimum(index, len(values) - 1)]


def _u(points: int = QUANTILES) -> np.ndarray:
    return (np.arange(points) + 0.5) / points


# -------------------------------------------------------------- Marchenko–Pastur vs heavy


def mp_quantiles(ratio: float, u: np.ndarray) -> np.ndarray:
    """Quantiles of the Marchenko–Pastur law of scale σ² = 1 and ratio λ ∈ (0, 1]:
    density √((b − x)(x − a)) / (2π λ x) on [a, b] = [(1 − √λ)², (1 + √λ)²], the limit of
    the eigenvalues of X Xᵀ/n for a p × n matrix X of i.i.d. unit-variance entries,
    λ = p/n. Computed by inverting the CDF, integrated on x = a + (b − a)(1 − cos πs)/2
    (which removes the square-root edges)."""
    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    s = np.linspace(0.0, 1.0, 8193)
    x = a + (b - a) * (1 - np.cos(np.pi * s)) / 2
    dx_ds = (b - a) * np.pi * np.sin(np.pi * s) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.sqrt(np.clip((b - x) * (x - a), 0, None)) / (2 * np.pi * ratio * x)
    integrand = np.nan_to_num(density * dx_ds)
    cdf = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(s))])
    cdf /= cdf[-1]
    return np.interp(u, cdf, x)


def frechet_quantiles(alpha: float, u: np.ndarray) -> np.ndarray:
    """Quantiles of the Fréchet law of scale 1 and tail index α: F(x) = exp(−x^(−α)) on
    (0, ∞), density ∝ x^(−(α+1)) for x ≫ 1, mode (α/(1 + α))^(1/α) > 0."""
    return (-np.log(u)) ** (-1 / alpha)


def _best_scale(target: np.ndarray, shape: np.ndarray) -> tuple[float, float]:
    """min over s ≥ 0 of mean |target − s·shape| (shape ≥ 0): a weighted median of
    target/shape with weights shape. Returns (s, the minimum) — a W1 distance when both
    are quantile functions on the same midpoints u_i."""
    keep = shape > 0
    ratios, weights = target[keep] / shape[keep], shape[keep]
    order = np.argsort(ratios)
    cumulative = np.cumsum(weights[order])
    scale = max(float(ratios[order][np.searchsorted(cumulative, cumulative[-1] / 2)]), 0.0)
    return scale, float(np.mean(np.abs(target - scale * shape)))


def _fit(target: np.ndarray, quantiles, bounds: tuple[float, float], u: np.ndarray) -> dict:
    """Shape parameter (bounded scalar search, log scale) and scale minimizing W1."""

    def distance(log_shape):
        return _best_scale(target, quantiles(math.exp(log_shape), u))[1]

    grid = np.linspace(math.log(bounds[0]), math.log(bounds[1]), 41)
    start = int(np.argmin([distance(g) for g in grid]))
    lo, hi = grid[max(start - 1, 0)], grid[min(start + 1, len(grid) - 1)]
    best = scipy.optimize.minimize_scalar(distance, bounds=(lo, hi), method="bounded")
    shape = math.exp(best.x)
    scale, w1 = _best_scale(target, quantiles(shape, u))
    return {"shape": shape, "scale": scale, "w1": w1}


def _ks(values, masses, model_quantiles: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance sup |F − G| between a measure and a law given by its
    quantiles on the midpoints (G evaluated by interpolating its quantile function)."""
    u = _u(len(model_quantiles))
    model_cdf = np.interp(values, model_quantiles, u, left=0.0, right=1.0)
    cdf = np.cumsum(masses)
    return float(max(np.max(np.abs(cdf - model_cdf)), np.max(np.abs(cdf - masses - model_cdf))))


def bulk_law(values, masses) -> dict:
    """Is the bulk Marchenko–Pastur or heavy-tailed? Two fitted laws and a verdict.

    Both families have a scale and one shape parameter, so their distances compare
    without a penalty for complexity:

    * Marchenko–Pastur MP(σ², λ), λ ∈ [0.005, 1] (:func:`mp_quantiles`): what the bulk
      would be if the curvature were a Wishart matrix of random features (compact
      support, square-root edges);
    * Fréchet with scale s and tail index α ∈ [0.5, 50] (:func:`frechet_quantiles`): the
      law on (0, ∞) with a power-law tail (density ∝ λ^(−(α+1)), the paper's Fig. 4d
      shape) and, like MP, a mode away from 0; it is the extreme-value law of power-law
      tails, and the bulk of a Wishart matrix of heavy-tailed (infinite-variance) entries
      is far closer to it than to MP.

    Each is fitted by minimizing the Wasserstein-1 distance W1 = ∫₀¹ |F⁻¹(u) − G⁻¹(u)| du
    to the measure (on 4096 midpoints u; for a given shape the best scale is a weighted
    median, the shape by a bounded search). The measure is used as given: mass below 0
    counts against both (their support is [0, ∞)). Returns each law's parameters, W1,
    W1 relative to the measure's mean |λ|, and Kolmogorov–Smirnov distance, and
    ``preferred``: the law with the smaller W1 ("marchenko-pastur" or "heavy-tailed"),
    with ``w1_ratio`` = W1(MP) / W1(Fréchet). W1 decides (it weighs the tail by its
    distance); KS, which does not, is reported alongside.
    """
    values, masses = _measure(values, masses)
    u = _u()
    target = _quantiles(values, masses, u)
    scale = float(masses @ np.abs(values))
    if not scale > 0:
        raise HspecError("bulk: all its mass is at 0")
    fits = {}
    for name, quantiles, bounds, names in (
        ("marchenko_pastur", mp_quantiles, (0.005, 1.0), ("ratio", "sigma2")),
        ("frechet", frechet_quantiles, (0.5, 50.0), ("alpha", "scale")),
    ):
        fit = _fit(target, quantiles, bounds, u)
        model = fit["scale"] * quantiles(fit["shape"], u)
        fits[name] = {
            names[0]: fit["shape"],
            names[1]: fit["scale"],
            "w1": fit["w1"],
            "w1_relative": fit["w1"] / scale,
            "ks": _ks(values, masses, model),
        }
    mp, heavy = fits["marchenko_pastur"]["w1"], fits["frechet"]["w1"]
    return {
        **fits,
        "preferred": "marchenko-pastur" if mp <= heavy else "heavy-tailed",
        "w1_ratio": mp / heavy if heavy > 0 else math.inf,
        "method": "W1-optimal Marchenko-Pastur(sigma2, ratio) vs Frechet(scale, alpha) fits",
    }


# ------------------------------------------------------------------------------ symmetry


def _run_masses(result) -> tuple[np.ndarray, np.ndarray, int]:
    runs = np.asarray(result.runs)
    if len(runs) != len(result.nodes) or not len(runs):
        raise HspecError("result: needs its Lanczos runs (a Lanczos result with a run index)")
    return runs, np.asarray(result.weights, float), int(runs.max()) + 1


def _atoms(result, weights) -> tuple[np.ndarray, np.ndarray]:
    outliers = np.asarray(result.outliers, float)
    return (
        np.concatenate([outliers, np.asarray(result.nodes, float)]),
        np.concatenate([np.full(len(outliers), 1 / result.dim), weights]),
    )


def symmetry(result, level: float = 0.9, resamples: int = 2000, seed: int = 0) -> dict:
    """The asymmetry of the whole spectrum about 0 with its errors.

    ``asymmetry`` = W1(μ, μ reflected) / (2 E|λ|) of the pooled measure (outliers with
    mass 1/dim, :func:`hspec.numerics.analysis.asymmetry`): 0 for a spectrum symmetric
    about 0, 1 for a one-signed one. ``per_run``: the same of each Lanczos run's measure;
    ``standard_error``: their standard deviation / √n_vec (None for n_vec = 1);
    ``interval``: the percentile ``level`` bootstrap interval of the pooled asymmetry
    over ``resamples`` resamplings of the runs with replacement (None for n_vec = 1).
    The spread measures the start vectors' randomness; the asymmetry of a finite
    quadrature is biased upward (a symmetric spectrum's Ritz values are not exactly
    symmetric), by about the per-run value's size when that is small.
    """
    runs, weights, n_vec = _run_masses(result)
    per_run = [
        asymmetry(*_atoms(result, np.where(runs == run, weights * n_vec, 0.0)))
        for run in range(n_vec)
    ]
    out = {
        "asymmetry": asymmetry(*_atoms(result, weights)),
        "per_run": per_run,
        "standard_error": None,
        "interval": None,
        "level": level,
        "n_vec": n_vec,
        "method": "W1(mu, reflected mu) / (2 E|lambda|); SE across runs; bootstrap of runs",
    }
    if n_vec >= 2:
        out["standard_error"] = float(np.std(per_run, ddof=1) / math.sqrt(n_vec))
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n_vec, np.full(n_vec, 1 / n_vec), size=resamples)
        boot = [asymmetry(*_atoms(result, weights * draw[runs])) for draw in draws]
        out["interval"] = [float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])]
    return out


# ---------------------------------------------------------------------------- power law


def _truncated_rate(mean_log: float, span: float) -> float:
    """The rate a of the exponential law truncated to [0, r] (r = ``span``) whose mean is
    ``mean_log`` ∈ (0, r): the root of 1/a − r/(e^{ar} − 1) = mean (a = 0: r/2)."""

    def gap(a):
        if abs(a * span) < 1e-8:
            return span / 2 - a * span**2 / 12 - mean_log
        return 1 / a - span / math.expm1(a * span) - mean_log

    bound = 200.0 / span
    if gap(-bound) * gap(bound) > 0:  # the mass sits at one end of the range: no power law
        raise HspecError(
            f"fit range: its mass sits at one end (mean log {mean_log:.3g} of {span:.3g})"
        )
    return scipy.optimize.brentq(gap, -bound, bound, xtol=1e-12)


def _truncated_information(a: float, span: float) -> float:
    """Fisher information per observation of that rate: the variance of the truncated
    exponential, 1/a² − r² e^{ar} / (e^{ar} − 1)²."""
    if abs(a * span) < 1e-6:
        return span**2 / 12
    return 1 / a**2 - span**2 * math.exp(a * span) / math.expm1(a * span) ** 2


TAIL_TOP = 30.0  # eigenvalues' mass above the fit range (the default of tail_exponent)
TAIL_RULE = (
    "automatic fit range, per sign: hi = the |λ| above which lie {top:g} eigenvalues' mass "
    "(dim × mass), lo between hi / 10^{span:g} and hi / 10^({span:g}/2) where the fitted law is "
    "nearest the measure in Kolmogorov–Smirnov distance (Clauset, Shalizi and Newman's rule); "
    "on [lo, hi] the maximum-likelihood exponent b of a "
    "truncated power law (density ∝ |λ|^-b) fitted to the spectral measure there, without "
    "smoothing, so that 256 and 2048 Lanczos steps give the same range and estimate; its "
    "interval counts the start vectors' randomness in the mass and in the range"
)


def tail_exponent(
    values,
    masses,
    dim: int,
    *,
    sign: int = 1,
    span: float = 1.0,
    top: float = TAIL_TOP,
    n_vec: int = 1,
    level: float = 0.95,
    fit_range=None,
) -> dict:
    """The power-law exponent b of the density φ(λ) ∝ |λ|^(−b) in the tail of one sign.

    Fit range (the rule ``TAIL_RULE``, unless ``fit_range`` = [lo, hi] is given): hi is
    the |λ| above which the measure holds the mass of ``top`` eigenvalues (``top``/dim:
    the largest eigenvalues, and any outliers among them, are single atoms whose Ritz
    values resolve individually at many steps and not at few); lo, between
    hi / 10^``span`` and hi / 10^(``span``/2), minimizes the KS distance between the
    measure on [lo, hi] and the law fitted there (Clauset, Shalizi & Newman 2009: the
    power law starts where it describes the data best; a range reaching into a gap or
    the mass near 0 fits badly). Both come from the CDF of the spectral measure, which
    Lanczos quadratures of 256 or 2048 steps estimate alike, unlike the smoothed
    density's edge (kernel width ∝ 1/steps).

    Estimate: on [lo, hi], u = ln(|λ|/lo) of a truncated power law is a truncated
    exponential of rate a = b − 1 on [0, r], r = ln(hi/lo); the maximum-likelihood a
    solves E[u] = 1/a − r/(e^{ar} − 1), with E[u] the measure's conditional mean there
    (a quadrature of a function with two kinks: error about one node's mass).

    Interval: b ± z·SE at ``level`` (normal quantile z), SE² = sampling² + range²:

    * sampling: the measure of one Gaussian start vector weights each of the N = dim·m
      eigenvalues in the range (m its mass) by χ²₁/dim, so E[u] has variance ≈ 2 Var(u)/N
      per run: √(2 / (n_vec · N · I(a))), I(a) the Fisher information (the truncated
      exponential's variance);
    * range (automatic range only): the top mass that sets hi is a χ² estimate too
      (relative standard deviation √(2/(n_vec·top))): half the difference of the
      exponents refitted (lo chosen again) with hi moved to that mass ± one standard
      deviation, and (in quadrature) half the difference of those refitted with lo two
      candidates lower and higher.

    Returns b, its standard error (and both parts), interval, lo, hi, N, sign, the rule
    and the method, and a: the amplitude of a·|λ|^(−b) holding the range's share of the
    measure (normalized to 1); raises HspecError when fewer than 10 eigenvalues' mass lies in the
    range.
    """
    if sign not in (1, -1):
        raise HspecError(f"sign: must be 1 or -1, got {sign!r}")
    values, masses = np.asarray(values, float) * sign, np.asarray(masses, float)
    keep = values > 0
    if not keep.any():
        raise HspecError(f"sign: no mass of sign {sign:+d}")
    order = np.argsort(values[keep])[::-1]
    x, w = values[keep][order], masses[keep][order] / masses.sum()
    z = scipy.stats.norm.ppf((1 + level) / 2)
    if fit_range is not None:
        lo, hi = (float(v) for v in fit_range)
        b, error, count = _tail_fit(x, w, dim, lo, hi, n_vec)
        rule, range_error = "given", 0.0
    else:
        rule = TAIL_RULE.format(top=top, span=span)
        # the top mass is a χ² estimate too: refit at ± its standard deviation
        wobble = math.sqrt(2 / (n_vec * top))
        above = np.cumsum(w) * dim
        fits = []
        for mass in (top, top * (1 - wobble), top * (1 + wobble)):
            hi = float(x[min(np.searchsorted(above, mass), len(x) - 1)])
            lo = _lower_end(x, w, dim, hi, span)
            fits.append((lo, hi, *_tail_fit(x, w, dim, lo, hi, n_vec)))
        lo, hi, b, error, count = fits[0]
        # and lo is a choice among near-equals: refit two candidates below and above
        step = 10 ** (span / 16)
        moved = [_tail_fit(x, w, dim, lo * f, hi, n_vec)[0] for f in (1 / step, step)]
        range_error = math.hypot(fits[1][2] - fits[2][2], moved[1] - moved[0]) / 2
    total = math.hypot(error, range_error)
    return {
        "a": _amplitude(count / dim, b, lo, hi),
        "b": b,
        "standard_error": total,
        "sampling_error": error,
        "range_error": range_error,
        "interval": [b - z * total, b + z * total],
        "level": level,
        "lo": lo,
        "hi": hi,
        "eigenvalues_in_range": count,
        "sign": sign,
        "rule": rule,
        "method": "truncated power-law MLE on the spectral measure; chi2 start-vector error",
    }


def _amplitude(mass: float, b: float, lo: float, hi: float) -> float:
    """a of the density a·x^(−b) holding ``mass`` on [lo, hi]."""
    if abs(b - 1) < 1e-9:
        return mass / math.log(hi / lo)
    return mass * (b - 1) / (lo ** (1 - b) - hi ** (1 - b))


def _ks_truncated(x, w, lo: float, hi: float, rate: float) -> float:
    """KS distance between the measure (atoms x, masses w) restricted to [lo, hi] and the
    truncated power law of exponent rate + 1 there."""
    inside = (x >= lo) & (x <= hi)
    order = np.argsort(x[inside])
    u, mass = np.log(x[inside][order] / lo), w[inside][order]
    cdf = np.cumsum(mass) / mass.sum()
    r = math.log(hi / lo)
    model = u / r if abs(rate * r) < 1e-8 else -np.expm1(-rate * u) / -math.expm1(-rate * r)
    return float(max(np.max(np.abs(cdf - model)), np.max(np.abs(cdf - mass / mass.sum() - model))))


def _lower_end(x, w, dim: int, hi: float, span: float) -> float:
    """The lo in [hi/10^span, hi/10^(span/2)] (17 log-spaced candidates) whose fitted
    truncated power law on [lo, hi] is nearest the measure in KS distance (Clauset,
    Shalizi & Newman, SIAM Review 51, 2009); candidates with fewer than 10 eigenvalues'
    mass in range are skipped."""
    best, best_lo = math.inf, hi / 10**span
    for lo in np.geomspace(hi / 10**span, hi / 10 ** (span / 2), 17):
        if w[(x >= lo) & (x <= hi)].sum() * dim < 10:
            continue
        inside = (x >= lo) & (x <= hi)
        mean_log = float(w[inside] @ np.log(x[inside] / lo) / w[inside].sum())
        distance = _ks_truncated(x, w, lo, hi, _truncated_rate(mean_log, math.log(hi / lo)))
        if distance < best:
            best, best_lo = distance, float(lo)
    return best_lo


def _tail_fit(x, w, dim: int, lo: float, hi: float, n_vec: int) -> tuple[float, float, float]:
    """(b, its sampling standard error, eigenvalues in range) of :func:`tail_exponent`'s
    estimate on [lo, hi], for atoms x with normalized masses w."""
    inside = (x >= lo) & (x <= hi)
    count = float(w[inside].sum() * dim)
    if count < 10:
        raise HspecError(
            f"fit range: [{lo:.3g}, {hi:.3g}] holds {count:.3g} eigenvalues' mass, fewer than 10"
        )
    span_log = math.log(hi / lo)
    mean_log = float(w[inside] @ np.log(x[inside] / lo) / w[inside].sum())
    rate = _truncated_rate(mean_log, span_log)
    error = math.sqrt(2 / (n_vec * count * _truncated_information(rate, span_log)))
    return rate + 1, error, count


# -------------------------------------------------------------------------- train vs test


def _moments_per_run(result) -> tuple[np.ndarray, np.ndarray]:
    """E[λ] and E[λ²] of each run's measure (outliers with mass 1/dim included)."""
    runs, weights, n_vec = _run_masses(result)
    means, squares = [], []
    for run in range(n_vec):
        values, masses = _atoms(result, np.where(runs == run, weights * n_vec, 0.0))
        masses = masses / masses.sum()
        means.append(masses @ values)
        squares.append(masses @ values**2)
    return np.array(means), np.array(squares)


def _ratio(a: np.ndarray, b: np.ndarray) -> dict:
    """mean(a)/mean(b) with the delta-method standard error from the runs' spreads."""
    ratio = float(a.mean() / b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"ratio": ratio, "standard_error": None}
    relative = (a.std(ddof=1) / math.sqrt(len(a)) / a.mean()) ** 2 + (
        b.std(ddof=1) / math.sqrt(len(b)) / b.mean()
    ) ** 2
    return {"ratio": ratio, "standard_error": abs(ratio) * math.sqrt(relative)}


def magnitude_ratio(train, test) -> dict:
    """How much smaller the test spectrum is than the train one (Fig. 2's caption).

    * ``top``: λ_max(test) / λ_max(train), the largest outlier or else the largest Ritz
      value of each (standard error from the outliers' residuals when known, else None);
    * ``mean``: E_test[λ] / E_train[λ] (trace/dim of each);
    * ``rms``: √E_test[λ²] / √E_train[λ²] (‖A‖_F/√dim of each).

    The moments of each Lanczos run are Hutchinson-type estimates (unbiased for a
    Gaussian start vector up to its normalization); their spread across runs gives the
    standard errors (delta method; None with a single run on either side).
    """
    tops = []
    for result in (train, test):
        values, _ = _atoms(result, np.asarray(result.weights, float))
        index = int(np.argmax(values))
        residuals = np.asarray(getattr(result, "residuals", np.empty(0)), float)
        known = index < len(result.outliers) and len(residuals) == len(result.outliers)
        tops.append((float(values[index]), float(residuals[index]) if known else None))
    (top_train, e_train), (top_test, e_test) = tops
    top = {"ratio": top_test / top_train, "standard_error": None}
    if e_train is not None and e_test is not None:
        top["standard_error"] = abs(top["ratio"]) * math.hypot(
            e_train / top_train, e_test / top_test
        )
    (mean_train, sq_train), (mean_test, sq_test) = _moments_per_run(train), _moments_per_run(test)
    rms = _ratio(np.sqrt(sq_test), np.sqrt(sq_train))
    return {
        "top": {**top, "train": top_train, "test": top_test},
        "mean": {
            **_ratio(mean_test, mean_train),
            "train": float(mean_train.mean()),
            "test": float(mean_test.mean()),
        },
        "rms": {
            **rms,
            "train": float(np.sqrt(sq_train).mean()),
            "test": float(np.sqrt(sq_test).mean()),
        },
        "method": "test / train; errors across Lanczos runs (delta method)",
    }
