"""LANCZOSAPPROXSPEC (paper Alg. 3) and the Gaussian smoothing of Ritz quadratures.

Each of n_vec Lanczos runs of M steps on the normalized operator gives Ritz values θ_m^l
and weights τ_m^l² (squared first components of the eigenvectors of T_M); the density
on the normalized axis t ∈ [−1, 1] is (paper eq. 10 with Gaussians for the deltas)

    φ(t) = (1/n_vec) Σ_l Σ_m τ_m^l² g_σ(t − θ_m^l),   σ = 2 / ((M − 1)·sqrt(8 log k)),

with k = 1.25 in the paper (the constant comes from EVSL). Lanczos commutes with
t ↦ c + d·t, so the runs are made on A itself and the nodes mapped to the normalized
axis; the grid and density are denormalized at the end (t → c + d·t, φ → φ/d).

:func:`log_density` is the log-scale variant of Fig. 4b/4d: the density of
u = log10|λ| over the eigenvalues of one sign, smoothed on the log axis.
"""

from __future__ import annotations

import math

import numpy as np

from hspec.errors import HspecError
from hspec.numerics.lanczos import LanczosRun
from hspec.numerics.normalization import Normalization

KERNEL_CUTOFF = 1e-8  # kernel values below this are dropped, as in the released code


def smoothing_width(steps: int, k: float = 1.25) -> float:
    """σ = 2 / ((M − 1)·sqrt(8 log k)) on the normalized axis [−1, 1] (Alg. 3)."""
    if not k > 1:
        raise HspecError(f"k: the smoothing constant must be > 1, got {k!r}")
    return 2.0 / ((steps - 1) * math.sqrt(8 * math.log(k)))


def gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """Σ_m w_m g_σ(t − θ_m) on ``grid``, with g_σ the centred Gaussian of width σ."""
    z = (grid[:, None] - np.asarray(nodes)[None, :]) / sigma
    kernel = np.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    kernel[kernel < KERNEL_CUTOFF] = 0.0
    return kernel @ np.asarray(weights)


def quadrature(runs: list[LanczosRun]) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values θ_m^l and weights τ_m^l²/n_vec of all runs, concatenated (eq. 10)."""
    ritz = [run.ritz() for run in runs]
    return (
        np.concatenate([theta for theta, _, _ in ritz]),
        np.concatenate([tau2 / len(runs) for _, tau2, _ in ritz]),
    )


def run_index(runs: list[LanczosRun]) -> np.ndarray:
    """The run (0 … n_vec − 1) of each node of :func:`quadrature`, in its order."""
    return np.concatenate(
        [np.full(run.steps, index, dtype=np.int64) for index, run in enumerate(runs)]
    )


def lanczos_approx_spec(
    nodes: np.ndarray,
    weights: np.ndarray,
    norm: Normalization,
    *,
    steps: int,
    points: int = 1024,
    k: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 3's smoothing step: the denormalized grid and density of a Ritz quadrature.

    Returns ``grid`` (K points, c + d·linspace(−1, 1, K)) and ``density`` (φ/d).
    """
    if not isinstance(points, int) or points < 2:
        raise HspecError(f"points: must be an integer ≥ 2, got {points!r}")
    t = np.linspace(-1.0, 1.0, points)
    phi = gaussian_density(norm.to_normalized(nodes), weights, t, smoothing_width(steps, k))
    return norm.to_original(t), phi / norm.d


def log_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    *,
    sign: int = 1,
    points: int = 1024,
    decades: float = 8.0,
    sigma: float | None = None,
    steps: int = 256,
    k: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Density of u = log10|λ| over the quadrature nodes of one sign (Fig. 4b/4d).

    The grid spans ``decades`` decades below the largest |node| of that sign; nodes
    below it are left out (their mass is not spread onto the grid). σ defaults to the
    Alg. 3 width scaled to the log axis: σ_u = (decades / 2)·σ(steps, k).
    Returns (u grid, density in u); the density in |λ| is density / (|λ| ln 10).
    """
    if sign not in (1, -1):
        raise HspecError(f"sign: must be 1 or -1, got {sign!r}")
    nodes = np.asarray(nodes) * sign
    keep = nodes > 0
    if not keep.any():
        raise HspecError(f"sign: no Ritz values of sign {sign:+d} to put on a log scale")
    log_nodes = np.log10(nodes[keep])
    top = log_nodes.max()
    grid = np.linspace(top - decades, top + 0.1 * decades, points)
    width = sigma if sigma is not None else decades / 2 * smoothing_width(steps, k)
    return grid, gaussian_density(log_nodes, np.asarray(weights)[keep], grid, width)
