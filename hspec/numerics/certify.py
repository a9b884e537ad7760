"""Certified outliers: true Ritz residuals and the eigenvalue intervals they prove.

For a symmetric A, any number θ and any nonzero vector x, the residual
r = ‖A x − θ x‖ / ‖x‖ proves that some eigenvalue λ of A satisfies |λ − θ| ≤ r
(Parlett, *The Symmetric Eigenvalue Problem*, Ch. 4): the interval [θ − r, θ + r]
holds an eigenvalue, whatever the method that produced (θ, x) and whether it converged.
Here r is *measured*: A x comes from a product with the operator (not from a recurrence's
estimate such as β_m |y_m[m]|, which rounding and lost orthogonality can make optimistic),
and the difference is formed in float64. The bound holds for the operator as computed:
the rounding of the product itself (about ε·‖A‖ in the operator's dtype) is below it.

If moreover no other eigenvalue lies within δ of θ, then |λ − θ| ≤ r² / δ (Kato–Temple,
Parlett Thm. 11.7.1). :func:`error_bounds` takes δ from what the spectrum estimate knows:
the other outliers (each θ_k within r_k of an eigenvalue) and the bulk interval
[c − d, c + d] that NORMALIZATION found for the rest of the spectrum. That gap is an
estimate (it assumes no eigenvalue was missed, as every Krylov stopping rule does), and
θ is the Rayleigh quotient of x only up to rounding, so the sharper bound is floored at
64·ε·max|θ| (ε of the operator's dtype, as :mod:`hspec.numerics.outliers` does) and
reported beside the rigorous r, never instead of it.

An outlier is *converged* when its error bound min(r, r²/δ) is at most
``tol``·max_k |θ_k| — the requested relative tolerance (``deflation_tol``) on the scale of
the largest outlier, for both deflation methods; otherwise it is flagged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hspec.numerics.normalization import Normalization


def ritz_residuals(values: np.ndarray, vectors: Tensor, product: Tensor) -> np.ndarray:
    """‖A x_i − θ_i x_i‖ / ‖x_i‖ for each column x_i of ``vectors``, given ``product`` =
    A X (same shape) and ``values`` θ; computed in float64, on the vectors' device."""
    x = vectors.to(torch.float64)
    theta = torch.as_tensor(np.asarray(values, dtype=np.float64), device=x.device)
    residual = torch.linalg.vector_norm(product.to(torch.float64) - x * theta, dim=0)
    return (residual / torch.linalg.vector_norm(x, dim=0)).cpu().numpy()


def error_bounds(
    values: np.ndarray, residuals: np.ndarray, bulk: Normalization, eps: float
) -> np.ndarray:
    """min(r_i, max(r_i² / δ_i, 64·eps·max|θ|)) for each outlier, δ_i the estimated gap
    from θ_i to the rest of the spectrum (the other outliers, less their residuals, and
    the bulk interval); r_i where that gap is not positive."""
    values, residuals = np.asarray(values, float), np.asarray(residuals, float)
    if not len(values):
        return residuals.copy()
    floor = 64 * eps * np.max(np.abs(values))
    low, high = bulk.c - bulk.d, bulk.c + bulk.d
    bounds = residuals.copy()
    for i, theta in enumerate(values):
        others = np.delete(np.abs(theta - values) - residuals, i)
        to_bulk = max(low - theta, theta - high, 0.0)
        gap = min([to_bulk, *others])
        if gap > 0:
            bounds[i] = min(residuals[i], max(residuals[i] ** 2 / gap, floor))
    return bounds


def converged(values: np.ndarray, bounds: np.ndarray, tol: float) -> np.ndarray:
    """True where the error bound is at most ``tol``·max|θ| (see the module docstring)."""
    values = np.asarray(values, float)
    if not len(values):
        return np.zeros(0, dtype=bool)
    return np.asarray(bounds) <= tol * np.max(np.abs(values))
