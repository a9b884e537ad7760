"""Exact reference spectra for small problems.

Dense matrices are built by a code path independent of :mod:`hspec.curvature.operators`
(``torch.func.hessian`` and per-example Jacobians), so the matrix-free operators and the
stochastic algorithms can be checked against them:

* :func:`dense_matrices` — H, G and R of eq. 4 as p×p matrices (p up to a few thousand).
* :func:`gram_spectrum` — the nonzero spectrum of G without a p×p matrix. Writing
  diag p_i − p_i p_iᵀ = B_i B_iᵀ with B_i = diag(√p_i) − p_i √p_iᵀ gives G = V Vᵀ with
  V = [J_1ᵀ B_1, …, J_nᵀ B_n] / √n ∈ R^{p×nC}, and the nonzero eigenvalues of V Vᵀ are
  those of the nC × nC Gram matrix VᵀV = [B_iᵀ J_i J_jᵀ B_j / n]_{ij} (usable for
  nC up to about 10⁴).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor
from torch.func import hessian, jacrev, vmap

from hspec.curvature.operators import COMPONENTS, CurvatureOperator, Params, eval_mode


def _flat_hessian(op: CurvatureOperator, scalar) -> Tensor:
    """The p×p Hessian of ``scalar(params)``, flattened in the operator's order."""
    blocks = hessian(scalar)(op.params)
    names = list(op.params)
    rows = [
        torch.cat(
            [blocks[a][b].reshape(op.params[a].numel(), op.params[b].numel()) for b in names], dim=1
        )
        for a in names
    ]
    return torch.cat(rows, dim=0)


def _jacobians(op: CurvatureOperator, x: Tensor) -> Tensor:
    """Per-example Jacobians ∂f(x_i)/∂θ of shape (batch, C, p)."""

    def f_single(params: Params, xi: Tensor) -> Tensor:
        return op.logits(params, xi[None])[0]

    jac = vmap(jacrev(f_single), in_dims=(None, 0))(op.params, x)
    return torch.cat([j.flatten(start_dim=2) for j in jac.values()], dim=2)


def _factors(probs: Tensor) -> Tensor:
    """B with B Bᵀ = diag p − p pᵀ, per example: shape (batch, C, C)."""
    sqrt_p = probs.sqrt()
    return torch.diag_embed(sqrt_p) - probs[:, :, None] * sqrt_p[:, None, :]


def dense_matrices(
    op: CurvatureOperator, components: Iterable[str] = COMPONENTS
) -> dict[str, Tensor]:
    """Dense H, G and/or R (keys ``hessian``, ``gradient_covariance``,
    ``prediction_hessian``) of the operator's model and data, averaged over the split."""
    total = {
        name: torch.zeros(op.dim, op.dim, dtype=op.dtype, device=op.device) for name in components
    }
    count = 0
    with eval_mode(op.model):
        for x, y in op._iter_batches():
            count += x.shape[0]
            logits = op.logits(op.params, x).detach()
            probs = torch.softmax(logits, dim=-1)
            g = probs - torch.nn.functional.one_hot(y, probs.shape[-1]).to(probs)

            def loss(params: Params, x=x, y=y) -> Tensor:
                return torch.nn.functional.cross_entropy(op.logits(params, x), y, reduction="sum")

            def weighted(params: Params, x=x, g=g) -> Tensor:
                return (op.logits(params, x) * g).sum()

            if "hessian" in total:
                total["hessian"] += _flat_hessian(op, loss)
            if "prediction_hessian" in total:
                total["prediction_hessian"] += _flat_hessian(op, weighted)
            if "gradient_covariance" in total:
                jac = _jacobians(op, x)
                outer = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
                total["gradient_covariance"] += torch.einsum("ncp,ncd,ndq->pq", jac, outer, jac)
    return {name: m / count for name, m in total.items()}


def eigenvalues(matrix: Tensor) -> np.ndarray:
    """Eigenvalues of a dense symmetric matrix, ascending, in float64."""
    sym = matrix.detach().to("cpu", torch.float64)
    return torch.linalg.eigvalsh((sym + sym.T) / 2).numpy()


def gram_spectrum(op: CurvatureOperator) -> np.ndarray:
    """Eigenvalues (ascending) of the nC × nC Gram matrix VᵀV whose nonzero spectrum is
    that of G (see module docstring); never forms a p×p matrix."""
    factors, count = [], 0
    with eval_mode(op.model):
        for x, _ in op._iter_batches():
            count += x.shape[0]
            probs = torch.softmax(op.logits(op.params, x).detach(), dim=-1)
            # rows of Vᵀ √n for these examples: B_iᵀ J_i, shape (batch·C, p)
            factors.append(
                torch.einsum("ndc,ndp->ncp", _factors(probs), _jacobians(op, x).detach()).flatten(
                    0, 1
                )
            )
    vt = torch.cat(factors)
    return eigenvalues(vt @ vt.T / count)
