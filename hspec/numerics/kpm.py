"""The Kernel Polynomial Method (KPM), the alternative to Lanczos the paper mentions
(Section 2; Lin, Saad & Yang 2016, Section 3.1).

On the normalized operator Â with spectrum in [−1, 1], the density is expanded in
Chebyshev polynomials,

    φ(t) = 1 / (π sqrt(1 − t²)) · [g_0 μ_0 + 2 Σ_{k≥1} g_k μ_k T_k(t)],
    μ_k = tr(T_k(Â)) / p ≈ (1/n_vec) Σ_l z_lᵀ T_k(Â) z_l / z_lᵀ z_l,

with Rademacher vectors z_l (stochastic trace estimation) and the Jackson damping g_k,
which keeps φ non-negative and free of Gibbs oscillations. The recurrence
T_{k+1}(Â)z = 2Â T_k(Â)z − T_{k−1}(Â)z and the identities μ_{2k} = 2 v_kᵀv_k − μ_0,
μ_{2k+1} = 2 v_{k+1}ᵀv_k − μ_1 (v_k = T_k(Â)z) give 2M moments from M products.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from hspec.errors import HspecError
from hspec.numerics.inner_products import dot, norm


def jackson_damping(count: int) -> np.ndarray:
    """Jackson coefficients g_0 … g_{N−1} for N = ``count`` moments."""
    n1 = count + 1
    k = np.arange(count)
    return ((n1 - k) * np.cos(np.pi * k / n1) + np.sin(np.pi * k / n1) / np.tan(np.pi / n1)) / n1


def kpm_moments(
    normalized,
    steps: int,
    n_vec: int,
    *,
    generator: torch.Generator,
    progress: bool = False,
    start_projection=None,
) -> np.ndarray:
    """2·``steps`` Chebyshev moments μ_k of the normalized operator, averaged over
    ``n_vec`` Rademacher vectors (``steps`` products each); ``start_projection`` (the
    deflation projector) restricts the trace to the deflated subspace."""
    if not isinstance(steps, int) or steps < 2:
        raise HspecError(f"steps: must be an integer ≥ 2, got {steps!r}")
    if not isinstance(n_vec, int) or n_vec < 1:
        raise HspecError(f"n_vec: must be a positive integer, got {n_vec!r}")
    moments = np.zeros(2 * steps)
    for run in range(n_vec):
        z = (torch.randint(0, 2, (normalized.dim,), generator=generator) * 2 - 1).to(
            normalized.device, normalized.dtype
        )
        if start_projection is not None:
            z = start_projection(z)
        z = z / norm(z)
        v_prev, v = z, normalized.matvec(z)
        mu0, mu1 = dot(z, z), dot(z, v)
        moments[0] += mu0
        moments[1] += mu1
        for k in tqdm(
            range(1, steps), desc=f"KPM {run + 1}/{n_vec}", disable=not progress, leave=False
        ):
            v_next = 2 * normalized.matvec(v) - v_prev
            moments[2 * k] += 2 * dot(v, v) - mu0
            moments[2 * k + 1] += 2 * dot(v_next, v) - mu1
            v_prev, v = v, v_next
    return moments / n_vec


def kpm_density(moments: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The Jackson-damped Chebyshev series of the density at points t ∈ (−1, 1); 0 at
    |t| = 1, where NORMALIZATION's margin guarantees there is no eigenvalue."""
    damped = moments * jackson_damping(len(moments))
    damped[1:] *= 2
    inside = np.abs(t) < 1
    series = np.polynomial.chebyshev.chebval(t[inside], damped)
    density = np.zeros_like(t, dtype=np.float64)
    density[inside] = series / (np.pi * np.sqrt(1 - t[inside] ** 2))
    return density
