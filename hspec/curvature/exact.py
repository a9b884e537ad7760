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
* :func:`class_deltas` and :func:`dense_class_matrices` — the per-example δ_{i,c'} of
  :mod:`hspec.curvature.class_structure`, formed explicitly from per-example Jacobians, and
  the dense G0, G1, G2, G1 + G2, G0 + G1 + G2 and G_within built from them by their
  definitions (also through :func:`dense_matrices`).
* :func:`class_mean_vectors` and :func:`class_gram_spectra` — the exact small-C route: the
  C² class means δ_{c,c'} as p-vectors (by C² vjps per batch, no Jacobian: C² p memory), and
  the nonzero spectra of G0, G1, G2, G1 + G2 and G0 + G1 + G2 from the C²×C² Gram matrix
  K = DᵀD of D = [δ_{c,c'}]: a part D Tᵀ T Dᵀ has the nonzero eigenvalues of T K Tᵀ, a C×C
  matrix for G0 and G1 (no p-dimensional eigenproblem).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor
from torch.func import hessian, jacrev, vjp, vmap

from hspec.curvature.class_structure import (
    BETWEEN_COMPONENTS,
    CLASS_COMPONENTS,
    factors,
    gram_coefficients,
)
from hspec.curvature.operators import COMPONENTS, CurvatureOperator, Params, eval_mode
from hspec.errors import HspecError


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
    ``prediction_hessian``) and the parts of G (:data:`CLASS_COMPONENTS`, by
    :func:`dense_class_matrices`) of the operator's model and data, averaged over the split."""
    parts = [name for name in components if name in CLASS_COMPONENTS]
    components = [name for name in components if name not in CLASS_COMPONENTS]
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
    dense = {name: m / count for name, m in total.items()}
    return {**dense, **(dense_class_matrices(*class_deltas(op), parts) if parts else {})}


def class_deltas(op: CurvatureOperator) -> tuple[Tensor, Tensor]:
    """δ_{i,c'} = √(p_i[c']) J_iᵀ (e_{c'} − p_i) for every example, shape (N, C, p), formed
    from per-example Jacobians by the textbook formula, and the targets (N,)."""
    deltas, targets = [], []
    with eval_mode(op.model):
        for x, y in op._iter_batches():
            probs = torch.softmax(op.logits(op.params, x).detach(), dim=-1)
            eye = torch.eye(probs.shape[-1], dtype=probs.dtype, device=probs.device)
            rows = probs.sqrt()[:, :, None] * (eye[None] - probs[:, None, :])  # a_{i,c'}
            deltas.append(torch.einsum("nck,nkp->ncp", rows, _jacobians(op, x).detach()))
            targets.append(y)
    return torch.cat(deltas), torch.cat(targets)


def dense_class_matrices(
    deltas: Tensor, targets: Tensor, parts: Iterable[str] = CLASS_COMPONENTS
) -> dict[str, Tensor]:
    """The dense parts of G (:mod:`hspec.curvature.class_structure`) from per-example
    δ_{i,c'} (N, C, p) and targets (N,), each by its definition (empty classes weigh 0)."""
    count, classes, _ = deltas.shape
    means, weights = [], []
    for c in range(classes):
        members = deltas[targets == c]
        weights.append(members.shape[0] / count)
        means.append(members.mean(0) if members.shape[0] else torch.zeros_like(deltas[0]))
    means = torch.stack(means)  # δ_{c,c'}: (C, C, p)
    off = ~torch.eye(classes, dtype=torch.bool, device=deltas.device)
    g0 = sum(w * torch.outer(means[c, c], means[c, c]) for c, w in enumerate(weights))
    g1, g2 = 0, 0
    for c, w in enumerate(weights):
        delta_c = means[c][off[c]].sum(0) / (classes - 1)
        g1 = g1 + w * (classes - 1) * torch.outer(delta_c, delta_c)
        nu = means[c][off[c]] - delta_c  # ν_{c,c'}, c' ≠ c: (C − 1, p)
        g2 = g2 + w * nu.T @ nu
    spread = (deltas - means[targets]).flatten(0, 1)
    dense = {
        "class_g0": g0,
        "class_g1": g1,
        "class_g2": g2,
        "class_g1_g2": g1 + g2,
        "class_g0_g1_g2": g0 + g1 + g2,
        "class_within": spread.T @ spread / count,
    }
    return {name: dense[name] for name in parts}


def class_mean_vectors(op: CurvatureOperator) -> tuple[Tensor, Tensor]:
    """The class means δ_{c,c'} as a (C, C, p) tensor and the class counts n_c (C,), matrix-
    free: per batch one forward and C² pullbacks (vmapped in chunks of ``op.block_size``)
    of the cotangents [y_i = c] a_{i,c'}. Memory C² p: for small C."""
    sums, counts = None, None
    with eval_mode(op.model):
        for x, y in op._iter_batches():
            logits, pullback = vjp(lambda p, x=x: op.logits(p, x), op.params)
            classes = logits.shape[-1]
            members = torch.nn.functional.one_hot(y, classes).to(logits.dtype)
            cotangents = torch.einsum("ic,idk->cdik", members, factors(logits.detach()))
            pulled = vmap(pullback, chunk_size=op.block_size)(cotangents.flatten(0, 1))[0]
            batch = torch.cat([t.reshape(classes * classes, -1) for t in pulled.values()], 1)
            sums = batch if sums is None else sums + batch
            step = torch.bincount(y, minlength=classes)
            counts = step if counts is None else counts + step
    if sums is None:
        raise HspecError("data: the split has no examples")
    means = sums.view(classes, classes, -1) / counts.clamp(min=1).to(sums.dtype)[:, None, None]
    return means, counts


def class_gram_spectra(
    op: CurvatureOperator, parts: Iterable[str] = BETWEEN_COMPONENTS
) -> dict[str, np.ndarray]:
    """Eigenvalues (ascending, float64) of T K Tᵀ for each between-class part (not
    ``class_within``): its nonzero eigenvalues are the part's, with no p×p matrix (the
    module docstring). For G0 and G1 the matrix is C×C; for the others C(C−1) or C²."""
    means, counts = class_mean_vectors(op)
    flat = means.flatten(0, 1)
    gram = (flat @ flat.T).to(torch.float64)  # K = DᵀD, C² × C²
    weights = counts.to(torch.float64) / counts.sum()
    spectra = {}
    for part in parts:
        if part not in BETWEEN_COMPONENTS:
            raise HspecError(f"parts: {part!r} has no Gram route; valid: {BETWEEN_COMPONENTS}")
        coefficients = gram_coefficients(part, weights.to(gram.device))
        spectra[part] = eigenvalues(coefficients @ gram @ coefficients.T)
    return spectra


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
