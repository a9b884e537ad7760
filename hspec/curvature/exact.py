"""Exact reference spectra for small problems.

Dense matrices are built by a code path independent of :mod:`hspec.curvature.operators`
(``torch.func.hessian`` and per-example Jacobians), so the matrix-free operators and the
stochastic algorithms can be checked against them:

* :func:`dense_matrices` — H, G and R of eq. 4 as p×p matrices (p up to a few thousand), for
  every loss, batch structure and parameter block of the operator: H = ∇² of the batch
  loss by ``torch.func.hessian``, G = Jᵀ (∇²_f ℓ) J from the explicit Jacobian J of the
  batch's outputs (``jacrev``) and the output Hessian of the loss (``torch.func.hessian``),
  R = ∇² of ⟨∂ℓ/∂f, f(θ)⟩, each loss in its textbook form (:func:`reference_loss`:
  ``torch.nn.functional.cross_entropy`` with ``ignore_index=-100``, the squared error, or
  the user's callable), the count of examples recomputed from the targets. LayerNorm runs
  from its formula (:class:`~hspec.curvature.operators.ComposedLayerNorm`): torch's nested
  derivatives of layer_norm are wrong in some compositions (``torch.func.hessian`` of a
  LayerNorm net is ~10% off in torch 2.14; pytorch/pytorch#196700).
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
from torch.func import grad, hessian, jacrev, vjp, vmap

from hspec.curvature.class_structure import (
    BETWEEN_COMPONENTS,
    CLASS_COMPONENTS,
    factors,
    gram_coefficients,
)
from hspec.curvature.loss import IGNORE_INDEX, CrossEntropy, SquaredError
from hspec.curvature.operators import (
    COMPONENTS,
    EQ4_COMPONENTS,
    ComposedLayerNorm,
    CurvatureOperator,
    Params,
)
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


def _batch_jacobian(op: CurvatureOperator, batch) -> Tensor:
    """The Jacobian of the batch's flattened outputs in the block's parameters, (M, p)."""
    jac = jacrev(lambda p: op.outputs(p, batch)[0].reshape(-1))(op.params)
    return torch.cat([j.flatten(start_dim=1) for j in jac.values()], dim=1)


def _jacobians(op: CurvatureOperator, batch) -> Tensor:
    """Per-example Jacobians ∂f(x_i)/∂θ of shape (batch, C, p): one example at a time for an
    (inputs, targets) pair of tensors, else the whole batch's Jacobian cut per example."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):

        def f_single(params: Params, xi: Tensor, yi: Tensor) -> Tensor:
            return op.outputs(params, (xi[None], yi[None]))[0][0]

        jac = vmap(jacrev(f_single), in_dims=(None, 0, 0))(op.params, *batch)
        return torch.cat([j.flatten(start_dim=2) for j in jac.values()], dim=2)
    out = op.outputs(op.params, batch)[0]
    return _batch_jacobian(op, batch).view(*out.shape, -1)


def reference_loss(op: CurvatureOperator):
    """(output, target) ↦ Σ over the batch of the operator's loss, in textbook form."""
    if isinstance(op.loss, CrossEntropy):

        def cross_entropy(out: Tensor, target: Tensor) -> Tensor:
            flat = out.reshape(-1, out.shape[-1])
            return torch.nn.functional.cross_entropy(
                flat, target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )

        return cross_entropy
    if isinstance(op.loss, SquaredError):
        return lambda out, target: ((out - target) ** 2).sum()
    return lambda out, target: op.loss.function(out, target).sum()


def reference_count(op: CurvatureOperator, out: Tensor, target) -> int:
    """Examples of a batch: the counted tokens of sequence cross-entropy, else N."""
    if isinstance(op.loss, CrossEntropy) and target.ndim == 2:
        return int((target != IGNORE_INDEX).sum())
    return out.shape[0]


def _factors(probs: Tensor) -> Tensor:
    """B with B Bᵀ = diag p − p pᵀ, per example: shape (batch, C, C)."""
    sqrt_p = probs.sqrt()
    return torch.diag_embed(sqrt_p) - probs[:, :, None] * sqrt_p[:, None, :]


def dense_matrices(
    op: CurvatureOperator, components: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Dense H, G and/or R (keys ``hessian``, ``gradient_covariance``,
    ``prediction_hessian``) and the parts of G (:data:`CLASS_COMPONENTS`, by
    :func:`dense_class_matrices`) of the operator's model, data, loss and parameter block
    (the module docstring), averaged over the split. By default every component the loss
    has: the parts of G only for cross-entropy on (N, C) logits (they are its)."""
    default = components is None
    if default:
        components = COMPONENTS if isinstance(op.loss, CrossEntropy) else EQ4_COMPONENTS
    parts = [name for name in components if name in CLASS_COMPONENTS]
    if parts and not isinstance(op.loss, CrossEntropy):
        raise HspecError(f"components: {parts[0]!r} needs cross-entropy, not {op.loss.name!r}")
    components = [name for name in components if name not in CLASS_COMPONENTS]
    total = {
        name: torch.zeros(op.dim, op.dim, dtype=op.dtype, device=op.device) for name in components
    }
    count = 0
    reference = reference_loss(op)
    with op.evaluating(), ComposedLayerNorm():
        for batch in op._iter_batches():
            out, target = op.outputs(op.params, batch)
            out = out.detach()
            count += reference_count(op, out, target)
            if default and target.ndim != 1:
                parts = []  # sequences: no class structure
            g = grad(lambda f, target=target: reference(f, target))(out)

            def loss(params: Params, batch=batch) -> Tensor:
                return reference(*op.outputs(params, batch))

            def weighted(params: Params, batch=batch, g=g) -> Tensor:
                return (op.outputs(params, batch)[0] * g).sum()

            if "hessian" in total:
                total["hessian"] += _flat_hessian(op, loss)
            if "prediction_hessian" in total:
                total["prediction_hessian"] += _flat_hessian(op, weighted)
            if "gradient_covariance" in total:
                jac = _batch_jacobian(op, batch)
                shape = out.shape
                outer = hessian(lambda f, t=target: reference(f.view(shape), t))(out.reshape(-1))
                total["gradient_covariance"] += jac.T @ outer @ jac
    dense = {name: m / count for name, m in total.items()}
    return {**dense, **(dense_class_matrices(*class_deltas(op), parts) if parts else {})}


def class_deltas(op: CurvatureOperator) -> tuple[Tensor, Tensor]:
    """δ_{i,c'} = √(p_i[c']) J_iᵀ (e_{c'} − p_i) for every example, shape (N, C, p), formed
    from per-example Jacobians by the textbook formula, and the targets (N,)."""
    deltas, targets = [], []
    with op.evaluating():
        for batch in op._iter_batches():
            out, y = op.outputs(op.params, batch)
            probs = torch.softmax(out.detach(), dim=-1)
            eye = torch.eye(probs.shape[-1], dtype=probs.dtype, device=probs.device)
            rows = probs.sqrt()[:, :, None] * (eye[None] - probs[:, None, :])  # a_{i,c'}
            deltas.append(torch.einsum("nck,nkp->ncp", rows, _jacobians(op, batch).detach()))
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
    with op.evaluating():
        for batch in op._iter_batches():
            y = op.outputs(op.params, batch)[1]
            logits, pullback = vjp(lambda p, b=batch: op.outputs(p, b)[0], op.params)
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
    with op.evaluating():
        for batch in op._iter_batches():
            out = op.outputs(op.params, batch)[0].detach()
            count += out.shape[0]
            probs = torch.softmax(out, dim=-1)
            # rows of Vᵀ √n for these examples: B_iᵀ J_i, shape (batch·C, p)
            factors.append(
                torch.einsum(
                    "ndc,ndp->ncp", _factors(probs), _jacobians(op, batch).detach()
                ).flatten(0, 1)
            )
    vt = torch.cat(factors)
    return eigenvalues(vt @ vt.T / count)
