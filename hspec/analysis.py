"""The numbers the figure captions quote, computed from stored spectra.

* :func:`separated_outliers` — eigenvalues isolated above the bulk, as the eye reads
  Figs. 1, 2, 5: the smoothed density vanishes (kernel cut-off) between them and the bulk.
* :func:`bulk_edges` — quantiles of the bulk's spectral distribution.
* :func:`power_law_fit` — φ = a·|λ|^(−b) fitted on log–log axes, with R² (Fig. 4d).
* :func:`asymmetry` — W1(μ, reflected μ) / (2 E|λ|): 0 for a spectrum symmetric about 0,
  1 for a one-signed one (Fig. 4d's "almost perfectly symmetric").
"""

from __future__ import annotations

import numpy as np

from hspec.errors import HspecError


def _components(positive: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges [start, stop) of the runs of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], positive.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def separated_outliers(grid: np.ndarray, density: np.ndarray, nodes: np.ndarray,
                       outliers: np.ndarray = np.empty(0)) -> np.ndarray:
    """Eigenvalue estimates lying above the bulk, descending.

    The bulk is the connected part of {density > 0} that carries the most mass; every
    Ritz value beyond its upper end, and every deflated outlier beyond it, counts.
    """
    runs = _components(density > 0)
    if not runs:
        raise HspecError("density: it is zero everywhere")
    step = grid[1] - grid[0]
    masses = [density[a:b].sum() * step for a, b in runs]
    _, stop = runs[int(np.argmax(masses))]
    upper = grid[stop - 1] if stop < len(grid) else np.inf
    found = np.concatenate([np.asarray(nodes)[np.asarray(nodes) > upper],
                            np.asarray(outliers)[np.asarray(outliers) > upper]])
    return np.sort(found)[::-1]


def bulk_edges(nodes: np.ndarray, weights: np.ndarray,
               quantiles: tuple[float, float] = (0.001, 0.999)) -> tuple[float, float]:
    """The given quantiles of the bulk's quadrature distribution (nodes, weights)."""
    order = np.argsort(nodes)
    cdf = np.cumsum(np.asarray(weights)[order])
    cdf /= cdf[-1]
    sorted_nodes = np.asarray(nodes)[order]
    return tuple(float(sorted_nodes[min(np.searchsorted(cdf, q), len(cdf) - 1)])
                 for q in quantiles)


def power_law_fit(x: np.ndarray, y: np.ndarray, lo: float, hi: float
                  ) -> dict[str, float]:
    """Least squares of log10 y = log10 a − b log10 x over lo ≤ x ≤ hi (y > 0).

    Returns a, b, the coefficient of determination R² (on the log–log axes) and the
    number of points used.
    """
    keep = (x >= lo) & (x <= hi) & (y > 0)
    if keep.sum() < 3:
        raise HspecError(f"fit range: fewer than 3 points with positive density in "
                         f"[{lo:.3g}, {hi:.3g}]")
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (intercept + slope * lx)
    r2 = 1 - residual @ residual / ((ly - ly.mean()) @ (ly - ly.mean()))
    return {"a": float(10 ** intercept), "b": float(-slope), "r2": float(r2),
            "points": int(keep.sum()), "lo": float(lo), "hi": float(hi)}


def asymmetry(nodes: np.ndarray, weights: np.ndarray) -> float:
    """W1 distance between the distribution and its reflection about 0, over 2 E|λ|."""
    nodes, weights = np.asarray(nodes), np.asarray(weights) / np.sum(weights)
    x = np.concatenate([nodes, -nodes])
    signed = np.concatenate([weights, -weights])
    order = np.argsort(x)
    cdf_gap = np.cumsum(signed[order])
    w1 = float(np.sum(np.abs(cdf_gap[:-1]) * np.diff(x[order])))
    scale = 2 * float(weights @ np.abs(nodes))
    return w1 / scale if scale > 0 else 0.0
