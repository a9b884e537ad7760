"""The user's exact check: hspec's estimate of a small model's spectrum against the truth.

:func:`check` builds the dense matrix of a curvature component (:mod:`hspec.curvature.exact`,
a code path independent of the matrix-free products), takes its eigenvalues, runs
:func:`hspec.numerics.spectrum.spectral_density` on the matrix-free operator with the
caller's settings and reports by :func:`compare` how far the estimate is:

* outliers (with ``deflate`` = C > 0): the deflated θ_i (descending) against the C exact
  eigenvalues of largest magnitude λ_i (as Alg. 5 finds them, descending): relative error
  |θ_i − λ_i| / |λ_i|, and whether the certified interval [θ_i − r_i, θ_i + r_i] holds an
  exact eigenvalue (it must: |λ − θ| ≤ ‖A x − θ x‖ for some eigenvalue λ; widened by the
  dense eigensolver's rounding p·eps·‖A‖);
* density: the Wasserstein-1 distance between hspec's spectral measure (outliers with
  mass 1/p, the bulk's Ritz quadrature) and the exact eigenvalues' (mass 1/p each),
  relative to the width of the exact bulk (the eigenvalues but those C); and the difference between the
  smoothed bulk density and the exact eigenvalues (those C left out) smoothed by the same
  kernel on the same grid: ∫ |φ − φ_exact| dλ (≤ 2) and max |φ − φ_exact| / max φ_exact.

The verdict passes when every number is within its tolerance (:data:`TOLERANCES`, stated
in the report): an estimate that fails is not to be trusted for this model and loss
with these settings (too few steps or vectors, or a wrong product).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from hspec.curvature.exact import dense_matrices, eigenvalues
from hspec.curvature.operators import curvature_operator
from hspec.errors import HspecError
from hspec.numerics.analysis import wasserstein1
from hspec.numerics.density import lanczos_approx_spec
from hspec.numerics.spectrum import SpectralDensity, spectral_density

MAX_PARAMS = 5000  # dense p × p matrices: 200 MB in float64 at this size
TOLERANCES = {
    "outlier_relative_error": 1e-3,  # per deflated outlier
    "density_w1": 0.02,  # W1 / (the exact bulk's width); measured on that net: 0.005
    # ∫ |φ − φ_exact| dλ, out of 2; measured on a 442-parameter net at 128 steps: 0.16 with
    # one start vector (whose χ² weights make the fine-kernel density noisy), 0.08 with four
    "density_l1": 0.5,
}


def check(
    model: torch.nn.Module,
    data,
    component: str = "hessian",
    *,
    max_params: int = MAX_PARAMS,
    tolerances: Mapping[str, float] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    **options,
) -> dict:
    """Check hspec against the exact spectrum of a small model (module docstring).

    Args:
        model, data, component, batch_size, device: as :func:`hspec.curvature_operator`;
            the products and the dense matrix are in float64.
        max_params: refuse a model with more parameters (the dense matrix is p × p).
        tolerances: overrides of :data:`TOLERANCES`.
        options: settings of :func:`hspec.spectral_density` (steps, n_vec, deflate, …).

    Returns :func:`compare`'s report, with ``component`` and ``n_params``.
    """
    op = curvature_operator(
        model, data, component, batch_size=batch_size, dtype=torch.float64, device=device
    )
    if op.dim > max_params:
        raise HspecError(
            f"model: {op.dim} parameters, more than max_params = {max_params}: the exact "
            "check builds a dense p x p matrix (raise max_params to override)"
        )
    exact = eigenvalues(dense_matrices(op, [component])[component])
    result = spectral_density(op, **options)
    return {"component": component, "n_params": op.dim, **compare(result, exact, tolerances)}


def compare(
    result: SpectralDensity, exact: np.ndarray, tolerances: Mapping[str, float] | None = None
) -> dict:
    """How far a Lanczos ``result`` is from the ``exact`` eigenvalues of its operator.

    Returns a JSON-able dict: ``outliers`` (per outlier: value, exact, relative_error,
    interval, interval_holds_exact), ``density`` (w1, l1, max_relative), ``tolerances``,
    ``failures`` (what exceeded its tolerance, in words) and ``passed``.
    """
    unknown = set(tolerances or {}) - set(TOLERANCES)
    if unknown:
        raise HspecError(
            f"tolerances: unknown {', '.join(sorted(unknown))}; valid: {', '.join(TOLERANCES)}"
        )
    limits = {**TOLERANCES, **(tolerances or {})}
    exact = np.sort(np.asarray(exact, dtype=float))
    if len(exact) != result.dim:
        raise HspecError(f"exact: {len(exact)} eigenvalues for an operator of dim {result.dim}")
    if not len(result.nodes):
        raise HspecError("result: the check needs a Lanczos result (its quadrature)")
    count = len(result.outliers)
    top = np.argsort(-np.abs(exact), kind="stable")[:count]
    matched = np.sort(exact[top])[::-1]
    # the dense eigensolver's own rounding, p·eps·‖A‖, widens the certified intervals
    rounding = len(exact) * np.finfo(float).eps * float(np.max(np.abs(exact)))
    lower, upper = (
        ends + sign * rounding for ends, sign in zip(result.outlier_intervals(), (-1, 1))
    )
    outliers = [
        {
            "value": float(theta),
            "exact": float(value),
            "relative_error": float(abs(theta - value) / abs(value)) if value else float("inf"),
            "interval": [float(lo), float(hi)],
            "interval_holds_exact": bool(np.any((exact >= lo) & (exact <= hi))),
        }
        for theta, value, lo, hi in zip(result.outliers, matched, lower, upper)
    ]
    bulk = np.delete(exact, top)
    width = float(bulk[-1] - bulk[0]) or 1.0
    _, smoothed = lanczos_approx_spec(
        bulk,
        np.full(len(bulk), 1 / result.dim),
        result.bulk,
        steps=result.settings["steps"],
        k=result.settings["k"],
        points=len(result.grid),
    )
    gap = np.abs(result.density - smoothed)
    density = {
        "w1": wasserstein1(*result.atoms(), exact, np.ones(len(exact))) / width,
        "l1": float(np.sum(gap) * (result.grid[1] - result.grid[0])),
        "max_relative": float(gap.max() / smoothed.max()) if smoothed.max() > 0 else 0.0,
    }
    failures = [
        f"outlier {i}: relative error {o['relative_error']:.2e} > {limits['outlier_relative_error']:g}"
        for i, o in enumerate(outliers)
        if not o["relative_error"] <= limits["outlier_relative_error"]
    ]
    failures += [
        f"outlier {i}: its interval holds no exact eigenvalue"
        for i, o in enumerate(outliers)
        if not o["interval_holds_exact"]
    ]
    failures += [
        f"density: {key} {density[key]:.3g} > {limits['density_' + key]:g}"
        for key in ("w1", "l1")
        if not density[key] <= limits["density_" + key]
    ]
    return {
        "outliers": outliers,
        "density": density,
        "tolerances": limits,
        "failures": failures,
        "passed": not failures,
        "settings": dict(result.settings),
        "method": "dense eigenvalues (hspec.curvature.exact) vs spectral_density",
    }
