"""The Lanczos iteration: SLOWLANCZOS (paper Alg. 1) and FASTLANCZOS (paper Alg. 2).

Starting from a random unit vector v_1, Lanczos builds the tridiagonal T_M = V_Mᵀ A V_M:

    w = A v_m − β_{m−1} v_{m−1};   α_m = v_mᵀ w;   w ← w − α_m v_m;
    β_m = ‖w‖;   v_{m+1} = w / β_m.

FASTLANCZOS keeps three vectors (O(p) memory); SLOWLANCZOS keeps the basis V and
re-orthogonalizes w against it (w ← w − V Vᵀ w, twice: "twice is enough"). The
eigenpairs (θ_m, y_m) of T_M give the Ritz values θ_m and the quadrature weights
τ_m² = y_m[1]² used by LANCZOSAPPROXSPEC (Alg. 3). The residual of a Ritz pair,
‖(A − θ_m I) V_M y_m‖ = β_M |y_m[M]|, is known without V (used by Alg. 4).

A breakdown (β_m ≈ 0: an invariant subspace was found) ends the run cleanly with the
m steps done. Tridiagonal eigenproblems are solved in float64 by
``scipy.linalg.eigh_tridiagonal``, falling back to a dense ``numpy.linalg.eigh`` of T
when LAPACK fails (the paper reports occasional failures, Section 2.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hspec.errors import HspecError
from hspec.numerics.inner_products import dot, gram, norm
from hspec.numerics.linear_operator import LinearOperator

REORTH = ("none", "full")


@dataclass
class LanczosRun:
    """The coefficients of one Lanczos run of m steps.

    Attributes:
        alpha: diagonal of T_m, shape (m,).
        beta: β_1 … β_m, shape (m,); β_1 … β_{m−1} are the off-diagonal of T_m and β_m
            is the norm of the last residual (0 after a breakdown).
        basis: the Lanczos vectors V_m (dim, m) when ``reorth="full"``, else None.
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: Tensor | None = None

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def eig(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values θ (ascending) and the eigenvectors Y of T_m (columns)."""
        return tridiagonal_eigh(self.alpha, self.beta[:-1])

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values θ, quadrature weights τ² = Y[0]² and residual norms β_m |Y[-1]|."""
        theta, y = self.eig()
        return theta, y[0] ** 2, abs(self.beta[-1]) * np.abs(y[-1])


def tridiagonal_eigh(
    diagonal: np.ndarray, offdiagonal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric tridiagonal matrix in float64 (LAPACK stemr), with a
    dense fallback when LAPACK reports a failure."""
    d = np.asarray(diagonal, dtype=np.float64)
    e = np.asarray(offdiagonal, dtype=np.float64)
    try:
        return scipy.linalg.eigh_tridiagonal(d, e)
    except (np.linalg.LinAlgError, ValueError):
        dense = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
        return np.linalg.eigh(dense)


def _breakdown_tolerance(dtype: torch.dtype) -> float:
    return 100 * torch.finfo(dtype).eps


def fast_lanczos(
    op: LinearOperator,
    steps: int,
    *,
    reorth: str = "none",
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "Lanczos",
    resume: dict | None = None,
    snapshot: Callable[[dict], None] | None = None,
) -> LanczosRun:
    """FASTLANCZOS (paper Alg. 2): ``steps`` products with A, O(dim) memory.

    Args:
        op: the symmetric operator.
        steps: number of Lanczos steps M (≥ 2; at most ``op.dim`` are taken).
        reorth: ``"none"`` (the paper's three-vector recursion) or ``"full"`` (keep the
            basis and re-orthogonalize every step, as SLOWLANCZOS, Alg. 1).
        start: the start vector (normalized here); default a Gaussian from ``generator``.
        progress: show a tqdm bar.
        resume: a state given to ``snapshot`` by an interrupted run: continue it.
        snapshot: called after every step with the state needed to resume (α, β and the
            current and previous vectors; the basis too with ``reorth="full"``).
    """
    if not isinstance(steps, int) or steps < 2:
        raise HspecError(f"steps: must be an integer ≥ 2, got {steps!r}")
    if reorth not in REORTH:
        raise HspecError(f"reorth: must be one of {REORTH}, got {reorth!r}")
    steps = min(steps, op.dim)
    if resume is not None:
        alpha, beta = resume["alpha"].tolist(), resume["beta"].tolist()
        v, v_prev, basis = resume["v"], resume["v_prev"], resume["basis"]
    else:
        v = op.randn(generator=generator) if start is None else start
        v = v / norm(v)
        v_prev = torch.zeros_like(v)
        basis = (
            torch.empty(op.dim, steps, dtype=op.dtype, device=op.device)
            if reorth == "full"
            else None
        )
        alpha, beta = [], []
    tol = _breakdown_tolerance(op.dtype)
    scale = max((abs(a) + b for a, b in zip(alpha, beta)), default=0.0)
    broke_down = bool(beta) and beta[-1] == 0.0
    for m in tqdm(
        range(len(alpha), 0 if broke_down else steps), desc=desc, disable=not progress, leave=False
    ):
        if basis is not None:
            basis[:, m] = v
        op.context = f"{desc} iteration {m + 1}"
        w = op.matvec(v)
        if m > 0:
            w = w - beta[-1] * v_prev
        alpha.append(dot(v, w))
        w = w - alpha[-1] * v
        if basis is not None:
            for _ in range(2):
                w = w - basis[:, : m + 1] @ gram(basis[:, : m + 1], w).to(w.dtype)
        beta.append(norm(w))
        scale = max(scale, abs(alpha[-1]) + beta[-1] + (beta[-2] if m > 0 else 0.0))
        if beta[-1] <= tol * scale:
            beta[-1] = 0.0
            break
        v_prev, v = v, w / beta[-1]
        if snapshot is not None:
            snapshot(
                {
                    "alpha": torch.tensor(alpha, dtype=torch.float64),
                    "beta": torch.tensor(beta, dtype=torch.float64),
                    "v": v,
                    "v_prev": v_prev,
                    "basis": basis,
                }
            )
    op.context = ""
    m = len(alpha)
    return LanczosRun(np.array(alpha), np.array(beta), None if basis is None else basis[:, :m])


def slow_lanczos(
    op: LinearOperator, steps: int | None = None, *, generator: torch.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SLOWLANCZOS (paper Alg. 1): Lanczos with full re-orthogonalization, by default for
    all ``dim`` steps, returning the Ritz values θ (ascending) and the eigenvectors of
    T. Run to ``dim`` steps it gives the exact spectrum; it is the reference for
    :func:`fast_lanczos` and costs O(dim × steps) memory."""
    run = fast_lanczos(
        op,
        op.dim if steps is None else steps,
        reorth="full",
        generator=generator,
        desc="SlowLanczos",
    )
    return run.eig()
