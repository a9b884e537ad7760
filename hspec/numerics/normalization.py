"""NORMALIZATION (paper Alg. 4): an interval [c − d, c + d] that holds the spectrum.

From M0 Lanczos steps with Ritz values θ_1 ≤ … ≤ θ_M0 and Ritz vectors y_1, y_M0:

    λ_min = θ_1 − ‖(A − θ_1 I) y_1‖,   λ_max = θ_M0 + ‖(A − θ_M0 I) y_M0‖,
    Δ = κ (λ_max − λ_min),   c = (λ_min + λ_max)/2,   d = (λ_max − λ_min)/2 + Δ,

so that (A − cI)/d has its spectrum in [−1, 1]. The residual norms come from the
tridiagonal matrix (β_M |y[M]|), so no Lanczos basis is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hspec.errors import HspecError
from hspec.numerics.lanczos import LanczosRun, fast_lanczos
from hspec.numerics.linear_operator import LinearOperator


@dataclass(frozen=True)
class Normalization:
    """The estimated extreme eigenvalues (before the margin) and the map t ↦ c + d·t."""

    lambda_min: float
    lambda_max: float
    c: float
    d: float

    def to_normalized(self, x):
        return (x - self.c) / self.d

    def to_original(self, t):
        return self.c + self.d * t


def bounds_from_runs(runs: list[LanczosRun], margin: float = 0.05) -> Normalization:
    """Alg. 4 applied to existing Lanczos runs (no new products): the widest interval."""
    if margin < 0:
        raise HspecError(f"margin: must be ≥ 0, got {margin!r}")
    lam_min, lam_max = math.inf, -math.inf
    for run in runs:
        theta, _, residual = run.ritz()
        lam_min = min(lam_min, float(theta[0] - residual[0]))
        lam_max = max(lam_max, float(theta[-1] + residual[-1]))
    width = lam_max - lam_min
    delta = margin * width
    half = width / 2 + delta
    if half <= 0:  # a multiple of the identity: any positive width maps it to 0
        half = max(abs(lam_max), 1.0) * 1e-6
    return Normalization(lam_min, lam_max, (lam_min + lam_max) / 2, half)


def normalization(
    op: LinearOperator,
    steps: int = 64,
    margin: float = 0.05,
    *,
    generator: torch.Generator | None = None,
    start: Tensor | None = None,
    progress: bool = False,
    resume: dict | None = None,
    snapshot=None,
) -> Normalization:
    """NORMALIZATION(A, M0=steps, κ=margin) of paper Alg. 4 (``steps`` products);
    ``resume``/``snapshot`` as in :func:`hspec.numerics.lanczos.fast_lanczos`."""
    if margin < 0:
        raise HspecError(f"margin: must be ≥ 0, got {margin!r}")
    run = fast_lanczos(
        op,
        steps,
        generator=generator,
        start=start,
        progress=progress,
        desc="Normalization",
        resume=resume,
        snapshot=snapshot,
    )
    return bounds_from_runs([run], margin)
