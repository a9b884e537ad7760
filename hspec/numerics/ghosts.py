"""Ghosts of Lanczos without re-orthogonalization, and the convergence of its density.

In finite precision the three-vector recursion (FASTLANCZOS, paper Alg. 2) loses
orthogonality once a Ritz value converges (Paige 1971), and the converged eigenvalue is
found again: T_m acquires *copies* of converged Ritz values and, while a copy forms,
*spurious* Ritz values that stand for no eigenvalue of A. Their quadrature weights τ² are
near rounding level, so the density hardly sees them, but counted as eigenvalues (an
outlier count, a bulk edge) they mislead.

Cullum & Willoughby (*Lanczos Algorithms for Large Symmetric Eigenvalue Computations*,
vol. I, Birkhäuser 1985, Section 4.5) tell them apart using T̂_m, T_m with its first row
and column deleted: an eigenvalue θ of T_m is

* *good* if it is a multiple eigenvalue of T_m (one copy is kept), or a simple one that
  is not an eigenvalue of T̂_m;
* *spurious* if it is a simple eigenvalue of T_m that is also an eigenvalue of T̂_m.

The reason: by the identity y[1]² = Π_j (θ − θ̂_j) / Π_{j≠i} (θ − θ_j) (the first
component of θ's eigenvector y of T_m, θ̂_j the eigenvalues of T̂_m), θ is an eigenvalue of
T̂_m exactly when y[1] = 0, i.e. when θ is invisible from the start vector: its Ritz vector
is not in the Krylov space that exact arithmetic would build. In exact arithmetic an
unreduced T_m has simple eigenvalues and y[1] ≠ 0, so neither case occurs.

Here a *copy* is a Ritz value that agrees with another converged Ritz value (residual
β_m |y[m]| ≤ tol·‖T‖) to tol·‖T‖ (tol: :func:`copy_tolerance`): in exact arithmetic Lanczos finds a
multiple eigenvalue of A once, so the extra members of such a cluster stand for no
eigenvalue; the rest are tested as above with the tolerance ``cw_tol``·‖T‖ on
|θ − θ̂|, at the precision of the float64 tridiagonal eigensolver.

:func:`density_change` measures convergence: the same Alg. 3 kernel applied to the
quadratures of T_{M/2} and T_M.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from hspec.numerics.analysis import wasserstein1
from hspec.numerics.density import gaussian_density
from hspec.numerics.lanczos import LanczosRun, tridiagonal_eigh

# |θ − θ̂| ≤ this × ‖T‖: θ is an eigenvalue of T̂. Measured on dense test matrices (float32
# and float64 products): spurious values lie within 2e-12 ‖T‖ of T̂'s, genuine ones beyond
# 3e-11 ‖T‖ (|θ − θ̂| ≈ y[1]² × the gap to the neighbours: a genuine value closer than
# this has almost no weight in the density either)
CW_TOLERANCE = 1e-11


def copy_tolerance(eps: float) -> float:
    """The relative tolerance under which two converged Ritz values are one eigenvalue
    found twice: 100 eps of the working precision (float32: 1.2e-5, float64: 2.2e-14).
    Measured on dense test matrices, the copies of a converged value spread over 5–500
    eps (those farther apart fail the Cullum–Willoughby test instead); two eigenvalues
    of A closer than this are counted once."""
    return float(100 * eps)


def ghosts(
    run: LanczosRun, *, eps: float = np.finfo(np.float64).eps, cw_tol: float = CW_TOLERANCE
) -> dict:
    """The Ritz values of one Lanczos run that stand for no distinct eigenvalue of A.

    Args:
        run: the α, β of a Lanczos run (``LanczosRun``).
        eps: the machine precision the products were computed in (sets the copy
            tolerance, :func:`copy_tolerance`).
        cw_tol: the Cullum–Willoughby tolerance, relative to ‖T‖ (max |θ|).

    Returns a dict: ``spurious`` (Ritz values failing the Cullum–Willoughby test, ascending),
    ``copies`` (the extra copies of multiple converged Ritz values: each cluster's members
    beyond the one with the largest weight), ``count`` (their total), ``good`` (the
    number of remaining Ritz values) and the tolerances used.
    """
    theta, y = run.eig()
    weight = y[0] ** 2
    residual = abs(run.beta[-1]) * np.abs(y[-1])
    scale = float(np.max(np.abs(theta))) if theta.size else 0.0
    tol = copy_tolerance(eps) * scale
    converged = residual <= tol
    is_copy = np.zeros(theta.size, dtype=bool)
    in_cluster = np.zeros(theta.size, dtype=bool)
    # theta ascending: clusters of converged values closer than tol to their neighbour
    index = np.flatnonzero(converged)
    if index.size > 1:
        breaks = np.concatenate([[True], np.diff(theta[index]) > tol])
        for cluster in np.split(index, np.flatnonzero(breaks)[1:]):
            if cluster.size > 1:
                in_cluster[cluster] = True
                is_copy[np.delete(cluster, np.argmax(weight[cluster]))] = True
    spurious = np.zeros(theta.size, dtype=bool)
    if theta.size > 1:
        hat = scipy.linalg.eigvalsh_tridiagonal(run.alpha[1:], run.beta[1:-1])
        distance = np.min(np.abs(theta[:, None] - hat[None, :]), axis=1)
        spurious = ~in_cluster & (distance <= cw_tol * scale)
    return {
        "spurious": theta[spurious],
        "copies": theta[is_copy],
        "count": int(spurious.sum() + is_copy.sum()),
        "good": int(theta.size - spurious.sum() - is_copy.sum()),
        "copy_tolerance": copy_tolerance(eps),
        "cw_tolerance": cw_tol,
    }


def density_change(run: LanczosRun, to_normalized, sigma: float, points: int = 1024) -> dict:
    """How much a run's density changes between M/2 and M steps.

    The quadratures (θ, τ²) of T_{M/2} (the first ⌊M/2⌋ steps of the same run) and of
    T_M are both smoothed with the final Gaussian kernel g_σ on t ∈ [−1, 1]
    (``to_normalized`` maps λ to t, as Alg. 3), and compared by

    * ``l1`` = ∫ |φ_M − φ_{M/2}| dt ∈ [0, 2] (twice the total-variation distance of the
      smoothed densities: 0 when the last M/2 steps changed nothing the kernel resolves);
    * ``w1`` = the Wasserstein-1 distance of the two quadratures, on the t axis (the width
      of [−1, 1] is 2), which needs no kernel.
    """
    half = LanczosRun(run.alpha[: max(run.steps // 2, 1)], run.beta[: max(run.steps // 2, 1)])
    t = np.linspace(-1.0, 1.0, points)
    quadratures = []
    for part in (half, run):
        theta, y = tridiagonal_eigh(part.alpha, part.beta[:-1])
        quadratures.append((to_normalized(theta), y[0] ** 2))
    full, halfway = (gaussian_density(n, w, t, sigma) for n, w in reversed(quadratures))
    return {
        "l1": float(np.sum(np.abs(full - halfway)) * (t[1] - t[0])),
        "w1": wasserstein1(*quadratures[0], *quadratures[1]),
    }
