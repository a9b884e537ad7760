"""The C outliers of a symmetric operator by thick-restart Lanczos (Wu & Simon 2000).

LOWRANKDEFLATION (paper Alg. 5, :func:`hspec.numerics.deflation.low_rank_deflation`) finds the C
outliers by subspace iteration: T = 256 iterations of C products each, 2,560 products for
C = 10. Its convergence rate |λ_{C+1}/λ_C| per iteration ignores everything the earlier
products revealed. A Krylov method keeps them: after m products the Lanczos basis
V_m = [v_1 … v_m] spans K_m(A, v_1) = span{v_1, A v_1, …, A^{m−1} v_1}, and the extreme
eigenvalues of the projected matrix H_m = V_mᵀ A V_m (the Ritz values) converge to the
extreme eigenvalues of A at a Chebyshev rate — for an outlier λ separated from the rest of
the spectrum by a relative gap γ the error falls like (1 + 2γ + 2√(γ + γ²))^{−2m}, so a
handful of products per outlier suffices on Hessian-like spectra (a bulk near 0 plus C
separated outliers), against hundreds per outlier for Alg. 5.

**Which eigenvalues.** Like Alg. 5, :func:`top_eigenpairs` returns the ``deflate``
eigenvalues of *largest magnitude*: the outliers of a deep-net Hessian are its
largest-|λ| eigenvalues, and subspace iteration converges to exactly those. The ``deflate``
largest-magnitude eigenvalues are the union of some of the largest and some of the most
negative ones — both ends of the spectrum, which is where Lanczos converges first. A
large negative eigenvalue counts as an outlier just as a large positive one; the values are
returned signed, sorted descending, as by :func:`~hspec.numerics.deflation.low_rank_deflation`.

**The iteration** (Lanczos with full re-orthogonalization, kept as an explicit projected
matrix). With an orthonormal basis V_j and H_j = V_jᵀ A V_j, one step is

    w = A v_j;   h = V_jᵀ w;   w ← w − V_j h   (twice: "twice is enough");
    H_j[:, j] = H_j[j, :] = h;   β_j = ‖w‖;   v_{j+1} = w / β_j,

so that A V_j = V_j H_j + β_j v_{j+1} e_jᵀ. The coefficients h are computed, not assumed
tridiagonal, so the same relation holds after a restart. The eigenpairs (θ_i, s_i) of H_j
give Ritz pairs (θ_i, x_i = V_j s_i) whose residual is known without a product:

    ‖A x_i − θ_i x_i‖ = β_j |s_i[j]| =: r_i.

**Thick restart** (Wu & Simon 2000). When the basis holds ``basis_size`` vectors, it is
replaced by the ℓ Ritz vectors of largest |θ| (the wanted ones and the nearest others,
ℓ = deflate + ⌊(basis_size − deflate)/2⌋) and the residual direction v_{j+1}:

    V ← [V S_ℓ, v_{j+1}],   H ← [[diag θ_ℓ, β_j S_ℓ[j, :]ᵀ], [β_j S_ℓ[j, :], ·]],

an "arrowhead" matrix, after which Lanczos continues. The kept Ritz vectors carry
everything the discarded products found about the wanted eigenvectors, so a restart
loses little; the basis, and the memory, stay at ``basis_size`` vectors of size dim.

**Convergence.** For a symmetric A and a unit vector x with Rayleigh quotient θ and
residual r = ‖A x − θ x‖:

* there is an eigenvalue λ with |λ − θ| ≤ r (``criterion="residual"``, rigorous);
* if no other eigenvalue lies within δ of θ, then |λ − θ| ≤ r² / δ
  (Kato–Temple; Parlett, *The Symmetric Eigenvalue Problem*, Thm. 11.7.1), and the angle
  between x and the eigenvector is at most r / δ.

``criterion="gap"`` (the default) accepts a wanted pair when min(r_i, r_i² / δ_i) ≤
tol·|θ_i|, with the gap δ_i estimated from the other Ritz values as
min_{k≠i} (|θ_i − θ_k| − r_k) (each θ_k is within r_k of an eigenvalue). The estimate
assumes no eigenvalue near θ_i has been missed by the Krylov space, the same assumption
every Krylov method makes when it stops; when the estimated gap is not positive the
rigorous bound r_i is used. The squared residual is why the gap criterion needs far fewer
products: a relative eigenvalue error of 1e-4 needs r ≈ 1e-2·√(|θ|·δ), not 1e-4·|θ|.
Residuals are floored at 64·ε·max|θ| (ε of the dtype), below which rounding dominates.

**Breakdown.** If β_j ≈ 0 the basis spans an invariant subspace and its Ritz pairs are
exact eigenpairs. For a random start vector the Krylov space then holds every *distinct*
eigenvalue of A (with probability one); only repeated copies can lie outside it. The
iteration therefore continues with a fresh random vector orthogonal to the basis, and
stops when such a fresh run changes none of the wanted values (or the whole space is
spanned): e.g. a matrix of rank 5 costs 5 + 1 products for the nonzero eigenvalues and
the null direction, plus one more to confirm.

**Limitation.** Without a breakdown a single-vector Krylov method sees one copy of a
repeated eigenvalue (the others only through rounding, slowly); use
:func:`~hspec.numerics.deflation.low_rank_deflation`, a block method, when wanted eigenvalues may
be exactly repeated. Deep-net Hessian outliers are distinct.

**Reusing a Lanczos run.** ``start`` may be a :class:`~hspec.numerics.lanczos.LanczosRun` kept with
its basis (``fast_lanczos(..., reorth="full")``): its first k − 1 vectors and the k × k
tridiagonal are taken over and the iteration continues from its last vector, saving
k − 1 products (63 for a 64-step NORMALIZATION run kept with its basis, at the cost of
storing those 64 vectors; ``spectral_density``'s own NORMALIZATION keeps none).

Reference: K. Wu and H. Simon, "Thick-restart Lanczos method for large symmetric
eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2):602–616, 2000.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hspec.errors import HspecError
from hspec.numerics.inner_products import gram, norm
from hspec.numerics.lanczos import LanczosRun
from hspec.numerics.linear_operator import LinearOperator

CRITERIA = ("gap", "residual")


class NotConvergedWarning(RuntimeWarning):
    """top_eigenpairs spent ``max_products`` before every wanted pair converged."""


def default_basis_size(deflate: int, dim: int) -> int:
    """2·deflate + 40 vectors (60 for C = 10), at most dim: the basis holds the wanted Ritz
    vectors, the nearest unwanted ones and room for the Krylov expansion."""
    return min(dim, 2 * deflate + 40)


def _wanted(theta: np.ndarray, deflate: int) -> np.ndarray:
    """Indices of the ``deflate`` Ritz values of largest magnitude (ties: larger first)."""
    order = np.lexsort((-theta, -np.abs(theta)))
    return order[:deflate]


def _error_bounds(
    theta: np.ndarray, residual: np.ndarray, wanted: np.ndarray, criterion: str
) -> np.ndarray:
    """Bound on |λ − θ_i| for each wanted i: r_i, or min(r_i, r_i²/δ_i) with the gap δ_i."""
    bounds = residual[wanted].copy()
    if criterion == "residual" or len(theta) < 2:
        return bounds
    for n, i in enumerate(wanted):
        others = np.delete(np.arange(len(theta)), i)
        gap = float(np.min(np.abs(theta[i] - theta[others]) - residual[others]))
        if gap > 0:
            bounds[n] = min(bounds[n], residual[i] ** 2 / gap)
    return bounds


def _orthogonalize(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """w − basis (basisᵀ w), twice ("twice is enough"); returns (w, all coefficients)."""
    coeffs = gram(basis, w).to(w.dtype)
    w = w - basis @ coeffs
    again = gram(basis, w).to(w.dtype)
    return w - basis @ again, coeffs + again


def top_eigenpairs(
    op,
    deflate: int,
    *,
    tol: float = 1e-4,
    max_products: int | None = None,
    basis_size: int | None = None,
    criterion: str = "gap",
    generator: torch.Generator | None = None,
    start: Tensor | LanczosRun | None = None,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, Tensor, int]:
    """The ``deflate`` eigenvalues of largest magnitude of a symmetric operator, by
    thick-restart Lanczos (see the module docstring for the maths).

    Args:
        op: the symmetric operator: anything :meth:`LinearOperator.wrap` accepts, such
            as :func:`hspec.curvature_operator` or a :class:`LinearOperator` (whose
            ``hvp_count`` then counts these products too), or a callable with ``dim``.
        deflate: number of eigenpairs C, 1 ≤ C < dim (the outliers; as Alg. 5, those of
            largest |λ|, negative ones included).
        tol: relative accuracy of the eigenvalues: each returned value is within
            tol·|λ| of an eigenvalue (under ``criterion``).
        max_products: products allowed (default max(1000, 100·deflate)); when spent, the
            current estimates are returned with a :class:`NotConvergedWarning`.
        basis_size: vectors kept (memory: basis_size × dim, plus about half as many
            during a restart); default :func:`default_basis_size`, at least deflate + 2
            and at most dim. Products are single ``matvec`` calls.
        criterion: ``"gap"`` (default: error ≤ r²/gap, an estimated gap) or
            ``"residual"`` (error ≤ r, rigorous, needs about twice the products).
        generator: seeds the random start vector (and fresh vectors after a breakdown).
        start: a start vector (dim,), or a :class:`LanczosRun` with its basis to continue
            (saves its steps − 1 products).
        dim, dtype, device: for a plain callable ``op`` (as :meth:`LinearOperator.wrap`;
            ``dim`` is then required, dtype defaults to float32 on the CPU).
        progress: show a tqdm bar of products.

    Returns:
        ``(values, vectors, products)``: the eigenvalues (numpy float64, descending,
        signed), orthonormal eigenvectors (dim, deflate) in the operator's dtype and
        device, and the number of products used.
    """
    A = LinearOperator.wrap(op, dim, dtype=dtype, device=device)
    n = A.dim
    if not isinstance(deflate, int) or isinstance(deflate, bool) or not 1 <= deflate < n:
        raise HspecError(f"deflate: must be an integer in [1, dim) = [1, {n}), got {deflate!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise HspecError(f"tol: must be a relative tolerance in (0, 1), got {tol!r}")
    if criterion not in CRITERIA:
        raise HspecError(f"criterion: must be one of {CRITERIA}, got {criterion!r}")
    if max_products is None:
        max_products = max(1000, 100 * deflate)
    if not isinstance(max_products, int) or max_products < deflate:
        raise HspecError(
            f"max_products: must be an integer ≥ deflate = {deflate}, got {max_products!r}"
        )
    m = default_basis_size(deflate, n) if basis_size is None else basis_size
    if not isinstance(m, int) or not min(deflate + 2, n) <= m <= n:
        raise HspecError(
            f"basis_size: must be an integer in [deflate + 2, dim] = "
            f"[{min(deflate + 2, n)}, {n}], got {basis_size!r}"
        )
    keep = deflate + (m - deflate) // 2  # Ritz vectors kept at a restart

    V = torch.zeros(n, m, dtype=A.dtype, device=A.device)
    H = np.zeros((m, m))
    j = 0  # the next vector to multiply is V[:, j]; V[:, :j] are done
    if isinstance(start, LanczosRun):
        if start.basis is None:
            raise HspecError(
                "start: a LanczosRun needs its basis (run fast_lanczos with reorth='full')"
            )
        if tuple(start.basis.shape[:1]) != (n,):
            raise HspecError(
                f"start: the run's basis has {start.basis.shape[0]} rows, expected dim = {n}"
            )
        k = min(start.steps, m)
        V[:, :k] = start.basis[:, :k].to(A.device, A.dtype)
        j = k - 1  # v_k is multiplied next; T_{k−1} is taken over
        if j:
            H[:j, :j] = (
                np.diag(start.alpha[:j])
                + np.diag(start.beta[: j - 1], 1)
                + np.diag(start.beta[: j - 1], -1)
            )
    else:
        if start is None:
            v = A.randn(generator=generator)
        elif not isinstance(start, Tensor) or tuple(start.shape) != (n,):
            raise HspecError(
                f"start: expected a tensor of shape ({n},), got "
                f"{getattr(start, 'shape', type(start).__name__)}"
            )
        else:
            v = start.to(A.device, A.dtype)
        length = norm(v)
        if not length > 0 or not math.isfinite(length):
            raise HspecError("start: the start vector must be finite and nonzero")
        V[:, 0] = v / length

    eps = torch.finfo(A.dtype).eps
    first_products = A.hvp_count
    bar = tqdm(total=max_products, desc="Outliers", disable=not progress, leave=False)
    previous_wanted: np.ndarray | None = None  # wanted values at the last breakdown
    converged = False
    theta = s = wanted = None
    size = products = 0
    while True:
        A.context = f"top_eigenpairs product {A.hvp_count - first_products + 1}"
        w = A.matvec(V[:, j])
        bar.update(1)
        w, coeffs = _orthogonalize(w, V[:, : j + 1])
        h = coeffs.to(torch.float64).cpu().numpy()
        H[: j + 1, j] = h
        H[j, : j + 1] = h
        beta = norm(w)
        size = j + 1
        theta, s = np.linalg.eigh(H[:size, :size])
        scale = float(np.max(np.abs(theta)))
        residual = np.maximum(beta * np.abs(s[-1]), 64 * eps * scale)
        products = A.hvp_count - first_products
        broke_down = beta <= 100 * eps * max(scale, abs(H[j, j]) + beta)

        if size >= deflate:
            wanted = _wanted(theta, deflate)
            bounds = _error_bounds(theta, residual, wanted, criterion)
            if broke_down:
                values = np.sort(theta[wanted])
                if size == n or (
                    previous_wanted is not None
                    and np.allclose(values, previous_wanted, rtol=tol, atol=64 * eps * scale)
                ):
                    converged = True
                    break
                previous_wanted = values
            elif np.all(bounds <= tol * np.abs(theta[wanted])):
                converged = True
                break
        if products >= max_products:
            break

        if broke_down:  # invariant subspace: continue with a fresh direction
            if size == n:
                break
            w = A.randn(generator=generator).to(A.dtype)
            for _ in range(2):
                w, _ = _orthogonalize(w, V[:, :size])
            w = w / norm(w)
            if size == m:  # no room: thick restart around the exact Ritz vectors
                j = _restart(V, H, theta, s, keep)
            else:
                j = size
            V[:, j] = w
            H[j, :] = H[:, j] = 0.0
            continue
        if size == m:  # basis full: thick restart
            j = _restart(V, H, theta, s, keep)
        else:
            j = size
        V[:, j] = w / beta
        H[j, :] = H[:, j] = 0.0
    bar.close()
    A.context = ""

    if not converged:
        warnings.warn(
            f"top_eigenpairs: {products} products (max_products) spent "
            f"before the {deflate} wanted pairs reached tol={tol:g}; returning "
            "the current estimates",
            NotConvergedWarning,
            stacklevel=2,
        )
    order = wanted[np.argsort(-theta[wanted], kind="stable")]
    vectors = V[:, :size] @ torch.from_numpy(s[:, order]).to(A.device, A.dtype)
    return theta[order].copy(), vectors, products


def _restart(V: Tensor, H: np.ndarray, theta: np.ndarray, s: np.ndarray, keep: int) -> int:
    """Thick restart in place: V[:, :keep] ← the ``keep`` Ritz vectors of largest |θ|,
    H[:keep, :keep] ← diag θ; returns keep, the index of the next vector. (The coupling
    row β S[j, kept] is recomputed by the next step's coefficients h.)"""
    size = len(theta)
    kept = _wanted(theta, keep)
    V[:, :keep] = V[:, :size] @ torch.from_numpy(s[:, kept]).to(V.device, V.dtype)
    H[:] = 0.0
    H[np.arange(keep), np.arange(keep)] = theta[kept]
    return keep
