"""The numbers the figure captions quote, computed from stored spectra.

* :func:`separated_outliers` — eigenvalues isolated above the bulk, as the eye reads
  Figs. 1, 2, 5: the smoothed density vanishes (kernel cut-off) between them and the bulk.
* :func:`bulk_edges` — quantiles of the bulk's spectral distribution.
* :func:`power_law_fit` — φ = a·|λ|^(−b) fitted on log–log axes, with R² (Fig. 4d);
  :func:`power_law_r2` — the R² of a power law fitted otherwise
  (:func:`hspec.numerics.claims.tail_exponent`, the one the figures quote).
* :func:`asymmetry` — W1(μ, reflected μ) / (2 E|λ|): 0 for a spectrum symmetric about 0,
  1 for a one-signed one (Fig. 4d's "almost perfectly symmetric").
* :func:`wasserstein1` — W1 = ∫ |F_a − F_b| dλ between two spectral distributions given as
  weighted atoms (how two estimates of one bulk are compared, benchmarks/).
"""

from __future__ import annotations

import math

import numpy as np

from hspec.errors import HspecError
from hspec.numerics.density import KERNEL_CUTOFF


def kernel_reach(sigma: float, cutoff: float = KERNEL_CUTOFF) -> float:
    """Distance at which the Gaussian kernel g_σ (normalized axis, as in Alg. 3) falls
    below ``cutoff``: beyond it a node adds nothing to the smoothed density."""
    return sigma * math.sqrt(2 * math.log(1 / (cutoff * sigma * math.sqrt(2 * math.pi))))


def separated_outliers(
    values: np.ndarray,
    masses: np.ndarray,
    reach: float,
    *,
    min_mass: float = 0.0,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Eigenvalue estimates isolated above the bulk, descending, each counted once.

    ``values``/``masses`` are the estimated distribution as atoms (Ritz nodes and
    weights, deflated outliers with mass 1/p). The smoothed density is positive exactly
    within ``reach`` of an atom, so atoms closer than 2·reach form one connected part;
    the bulk is the part with the most mass, and every atom above it counts. Atoms
    lighter than ``min_mass`` (Lanczos ghosts and unconverged copies, whose weights are
    near rounding level) are ignored, and estimates closer than ``tolerance`` (the
    repeated copies of a converged Ritz value that Lanczos without re-orthogonalization
    produces) count once.
    """
    keep = np.asarray(masses) >= min_mass
    values, masses = np.asarray(values)[keep], np.asarray(masses)[keep]
    if values.size == 0:
        raise HspecError("values: no atom heavier than min_mass")
    order = np.argsort(values)
    values, masses = values[order], masses[order]
    part = np.concatenate([[0], np.cumsum(np.diff(values) > 2 * reach)])
    bulk = np.argmax(np.bincount(part, weights=masses))
    above = values[part > bulk][::-1]
    if above.size == 0:
        return above
    return above[np.concatenate([[True], -np.diff(above) > tolerance])]


def bulk_edges(
    nodes: np.ndarray, weights: np.ndarray, quantiles: tuple[float, float] = (0.001, 0.999)
) -> tuple[float, float]:
    """The given quantiles of the bulk's quadrature distribution (nodes, weights)."""
    order = np.argsort(nodes)
    cdf = np.cumsum(np.asarray(weights)[order])
    cdf /= cdf[-1]
    sorted_nodes = np.asarray(nodes)[order]
    return tuple(float(sorted_nodes[min(np.searchsorted(cdf, q), len(cdf) - 1)]) for q in quantiles)


def power_law_fit(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """Least squares of log10 y = log10 a − b log10 x over lo ≤ x ≤ hi (y > 0).

    Returns a, b, the coefficient of determination R² (on the log–log axes) and the
    number of points used.
    """
    keep = (x >= lo) & (x <= hi) & (y > 0)
    if keep.sum() < 3:
        raise HspecError(
            f"fit range: fewer than 3 points with positive density in [{lo:.3g}, {hi:.3g}]"
        )
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (intercept + slope * lx)
    r2 = 1 - residual @ residual / ((ly - ly.mean()) @ (ly - ly.mean()))
    return {
        "a": float(10**intercept),
        "b": float(-slope),
        "r2": float(r2),
        "points": int(keep.sum()),
        "lo": float(lo),
        "hi": float(hi),
    }


def power_law_r2(x: np.ndarray, y: np.ndarray, a: float, b: float, lo: float, hi: float):
    """R² of log10 y against the line log10 a − b log10 x over lo ≤ x ≤ hi (y > 0), and
    the number of points: how well a power law fitted otherwise describes a density."""
    keep = (x >= lo) & (x <= hi) & (y > 0)
    if keep.sum() < 3:
        raise HspecError(
            f"fit range: fewer than 3 points with positive density in [{lo:.3g}, {hi:.3g}]"
        )
    ly = np.log10(y[keep])
    residual = ly - (math.log10(a) - b * np.log10(x[keep]))
    return float(1 - residual @ residual / ((ly - ly.mean()) @ (ly - ly.mean()))), int(keep.sum())


def wasserstein1(atoms_a, masses_a, atoms_b, masses_b) -> float:
    """W1 = ∫ |F_a(λ) − F_b(λ)| dλ between the distributions Σ m_j δ(λ − a_j), each
    normalized to total mass 1: the gap of the two CDFs summed over the merged atoms."""
    masses_a, masses_b = np.asarray(masses_a, float), np.asarray(masses_b, float)
    x = np.concatenate([np.asarray(atoms_a, float), np.asarray(atoms_b, float)])
    signed = np.concatenate([masses_a / masses_a.sum(), -masses_b / masses_b.sum()])
    order = np.argsort(x)
    cdf_gap = np.cumsum(signed[order])
    return float(np.sum(np.abs(cdf_gap[:-1]) * np.diff(x[order])))


def asymmetry(nodes: np.ndarray, weights: np.ndarray) -> float:
    """W1 distance between the distribution and its reflection about 0, over 2 E|λ|."""
    nodes, weights = np.asarray(nodes), np.asarray(weights) / np.sum(weights)
    scale = 2 * float(weights @ np.abs(nodes))
    return wasserstein1(nodes, weights, -nodes, weights) / scale if scale > 0 else 0.0
