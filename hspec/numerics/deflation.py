"""LOWRANKDEFLATION (paper Alg. 5): the C outliers by subspace iteration.

    Q = QR(V),  V ~ N(0, I)^{p×C};   repeat T times:  V = A Q,  Q = QR(V).

Subspace iteration converges to the C eigenvalues of largest magnitude at the rate
|λ_{C+1}/λ_C|^t. Alg. 5 reads the outliers off as ‖A q_c‖, which loses their sign;
here the last iteration ends with a Rayleigh–Ritz step instead — the eigenpairs
(λ_c, s_c) of the C×C matrix Qᵀ A Q give signed eigenvalues whose error is the *square*
of the subspace error, and eigenvectors Q s_c. T iterations cost T·C products.
The last product V = A Q also gives A X = V S for the eigenvectors X = Q S exactly, so
their true residuals ‖A x_c − λ_c x_c‖ cost no further product (``return_product``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hspec.errors import HspecError
from hspec.numerics.inner_products import gram, orthonormalize
from hspec.numerics.linear_operator import LinearOperator


def low_rank_deflation(
    op: LinearOperator,
    deflate: int,
    iterations: int = 256,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    resume: dict | None = None,
    snapshot: Callable[[dict], None] | None = None,
    return_product: bool = False,
) -> tuple[np.ndarray, Tensor] | tuple[np.ndarray, Tensor, Tensor]:
    """The ``deflate`` eigenvalues of largest magnitude (descending, signed) and their
    orthonormal eigenvectors X (dim, deflate), by Alg. 5 with a final Rayleigh–Ritz step;
    with ``return_product``, also A X (from the last iteration's product, no new one).

    ``snapshot`` receives the state after each iteration (t and the block Q); pass it
    back as ``resume`` to continue an interrupted run."""
    if not isinstance(deflate, int) or not 1 <= deflate < op.dim:
        raise HspecError(
            f"deflate: must be an integer in [1, dim) = [1, {op.dim}), got {deflate!r}"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise HspecError(f"iterations: must be a positive integer, got {iterations!r}")
    if resume is not None:
        first, q = resume["t"], resume["q"]
    else:
        first, q = 0, orthonormalize(op.randn(deflate, generator=generator))
    for t in tqdm(range(first, iterations), desc="Deflation", disable=not progress, leave=False):
        op.context = f"deflation iteration {t + 1}"
        v = op.matmat(q)
        if t < iterations - 1:
            q = orthonormalize(v)
            if snapshot is not None:
                snapshot({"t": t + 1, "q": q})
    op.context = ""
    projected = gram(q, v).cpu()
    values, rotation = torch.linalg.eigh((projected + projected.T) / 2)
    order = torch.argsort(values, descending=True)
    rotation = rotation[:, order].to(q)
    if return_product:
        return values[order].numpy(), q @ rotation, v @ rotation
    return values[order].numpy(), q @ rotation
