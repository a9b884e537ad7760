"""The class/cross-class structure of G (Papyan, ICML 2019 and JMLR 2020), in the logits.

Papyan, "Measurements of three-level hierarchical structure in the outliers in the
spectrum of deepnet Hessians" (ICML 2019) and "Traces of class/cross-class structure
pervade deep learning spectra" (JMLR 2020) explain the outliers of G by the class means
of the gradients. For cross-entropy, example i of class c = y_i, p_i = softmax(f_i) and
J_i = ∂f_i/∂θ, the factorization diag p − p pᵀ = Σ_{c'} p[c'] (e_{c'} − p)(e_{c'} − p)ᵀ gives

    δ_{i,c'} = √(p_i[c']) · J_iᵀ (e_{c'} − p_i),      G = (1/N) Σ_i Σ_{c'} δ_{i,c'} δ_{i,c'}ᵀ,

i.e. δ_{i,c'} = J_iᵀ a_{i,c'} with a_{i,c'} the row c' of A_i = diag(√p_i)(I − 1 p_iᵀ).
With n_c examples in class c, w_c = n_c/N, the class means δ_{c,c'} = Ave_{i: y_i=c} δ_{i,c'},
δ_c = (1/(C−1)) Σ_{c'≠c} δ_{c,c'} and ν_{c,c'} = δ_{c,c'} − δ_c (c' ≠ c):

    G = G0 + G1 + G2 + G_within,  exactly, where
    G0 = Σ_c w_c δ_{c,c} δ_{c,c}ᵀ                 ("class_g0", rank ≤ C)
    G1 = Σ_c w_c (C−1) δ_c δ_cᵀ                   ("class_g1", rank ≤ C: the C outliers)
    G2 = Σ_c w_c Σ_{c'≠c} ν_{c,c'} ν_{c,c'}ᵀ       ("class_g2": the C(C−1) "mini-bulk")
    G_within = (1/N) Σ_i Σ_{c'} (δ_{i,c'} − δ_{y_i,c'})(δ_{i,c'} − δ_{y_i,c'})ᵀ  ("class_within")

Proof: Σ_{c'≠c} ν_{c,c'} = 0, so Σ_{c'≠c} δ_{c,c'}δ_{c,c'}ᵀ = (C−1) δ_cδ_cᵀ + Σ_{c'≠c} ν_{c,c'}ν_{c,c'}ᵀ
and G0 + G1 + G2 = Σ_c w_c Σ_{c'} δ_{c,c'}δ_{c,c'}ᵀ ("class_g0_g1_g2", the between-class
second moment); G minus it is the within-class scatter G_within, because the deviations
from a class mean sum to zero over the class. "class_g1_g2" is G1 + G2 (checked in float64
by tests/test_class_structure.py, to 1e-10 relative).

Every part is Σ_k u_k u_kᵀ with the u_k linear combinations of the δ_{c,c'}, so its product
with v needs only the C×C coefficients M[c, c'] = ⟨δ_{c,c'}, v⟩ = Ave_{i: y_i=c} t_i[c'], with
t_i = A_i J_i v (:func:`coefficients`), and then is (1/N) Σ_i J_iᵀ A_iᵀ z_i for per-example
z_i ∈ R^C (:func:`class_cotangent`, :func:`within_cotangent`): G0 v has z_i = M[c,c] e_c,
G1 v has z_i[c'] = m_c = Ave_{c'≠c} M[c,c'] (c' ≠ c), G2 v has z_i[c'] = M[c,c'] − m_c
(c' ≠ c; Σ_{c'≠c} of it is 0, so the δ_c term drops), G1+G2 has M[c,c'] (c' ≠ c),
G0+G1+G2 has M[c, :], and G_within has t_i − M[c, :] (0 at y_i's row sums over the class).

A_i u and A_iᵀ z are computed without 1 − p_r cancellation when the softmax saturates
(r = argmax f_i, see :mod:`hspec.curvature.loss`): A u = √p ⊙ (w − pᵀw) with w = u − u_r, and
A ᵀz = q ⊙ s − p ⊙ (Σ s − s) with s = √p ⊙ z and q = 1 − p, q_r = Σ_{c≠r} p_c.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the between-class parts of G: sums of ≤ C² outer products of class means (Gram route)
BETWEEN_COMPONENTS = ("class_g0", "class_g1", "class_g2", "class_g1_g2", "class_g0_g1_g2")
#: the parts of G, as ``curvature_operator`` components (the module docstring defines them)
CLASS_COMPONENTS = BETWEEN_COMPONENTS + ("class_within",)


def _top_mask(logits: Tensor) -> Tensor:
    """True at r = argmax_c f_c, row by row (no gradient flows)."""
    top = logits.detach().argmax(-1, keepdim=True)
    return torch.arange(logits.shape[-1], device=logits.device) == top


def factor_product(logits: Tensor, u: Tensor) -> Tensor:
    """t_i = A_i u_i row by row, t_i[c'] = √p[c'] (u[c'] − pᵀu), as √p ⊙ (w − pᵀw) with
    w = u − u_r (no cancellation at p_r → 1)."""
    prob = torch.softmax(logits.detach(), dim=-1)
    mask = _top_mask(logits)
    w = u - (u * mask).sum(-1, keepdim=True)
    return prob.sqrt() * (w - (prob * w).sum(-1, keepdim=True))


def factor_transpose_product(logits: Tensor, z: Tensor) -> Tensor:
    """A_iᵀ z_i row by row, = √p ⊙ z − p (√pᵀ z), as q ⊙ s − p ⊙ (Σ s − s) with s = √p ⊙ z,
    q = 1 − p and q_r = Σ_{c≠r} p_c (no cancellation at p_r → 1)."""
    prob = torch.softmax(logits.detach(), dim=-1)
    mask = _top_mask(logits)
    rest = (prob * ~mask).sum(-1, keepdim=True)
    q = torch.where(mask, rest, 1 - prob)
    s = prob.sqrt() * z
    return q * s - prob * (s.sum(-1, keepdim=True) - s)


def factors(logits: Tensor) -> Tensor:
    """A_i = diag(√p_i)(I − 1 p_iᵀ) per example, shape (batch, C, C) (row c' is a_{i,c'}),
    with the diagonal √p_c (1 − p_c) written as in :func:`factor_transpose_product`."""
    eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return factor_transpose_product(logits[:, None, :].expand(-1, logits.shape[-1], -1), eye)


def coefficients(t: Tensor, targets: Tensor, classes: int) -> Tensor:
    """S[c, c'] = Σ_{i: y_i=c} t_i[c'] for t of shape (batch, C): the class sums, (C, C)."""
    return torch.nn.functional.one_hot(targets, classes).to(t.dtype).T @ t


def class_means(sums: Tensor, counts: Tensor) -> Tensor:
    """M = S / n_c row by row (rows of empty classes are 0); sums (..., C, C), counts (C,)."""
    return sums / counts.clamp(min=1).to(sums.dtype)[:, None]


def class_coefficients(part: str, means: Tensor) -> Tensor:
    """Z with z_i = Z[y_i] for a between-class ``part`` (not ``class_within``), from the
    coefficients M (..., C, C): see the module docstring."""
    classes = means.shape[-1]
    eye = torch.eye(classes, dtype=torch.bool, device=means.device)
    if part == "class_g0":
        return means * eye
    if part == "class_g0_g1_g2":
        return means
    off = means.masked_fill(eye, 0.0)
    if part == "class_g1_g2":
        return off
    mean_off = off.sum(-1, keepdim=True) / (classes - 1)  # m_c
    if part == "class_g1":
        return mean_off.expand_as(off).masked_fill(eye, 0.0)
    if part == "class_g2":
        return (off - mean_off).masked_fill(eye, 0.0)
    raise ValueError(f"not a between-class part: {part!r}")


def gram_coefficients(part: str, weights: Tensor) -> Tensor:
    """T with part = D Tᵀ T Dᵀ for D = [δ_{c,c'}] (p × C², column c·C + c'), from the class
    weights w (C,): each row of T is the coefficients of one u_k (√w_c δ_{c,c} for G0,
    √(w_c (C−1)) δ_c for G1, √w_c ν_{c,c'} for G2). So the part's nonzero eigenvalues are
    those of T (DᵀD) Tᵀ. Between-class parts only."""
    classes = weights.shape[0]
    blocks: dict[str, list[Tensor]] = {"g0": [], "g1": [], "g2": []}
    for c in range(classes):
        root = float(weights[c]) ** 0.5
        others = [c * classes + d for d in range(classes) if d != c]
        row = weights.new_zeros(classes * classes)
        row[c * classes + c] = root
        blocks["g0"].append(row)
        row = weights.new_zeros(classes * classes)
        row[others] = root * (classes - 1) ** 0.5 / (classes - 1)
        blocks["g1"].append(row)
        for column in others:
            row = weights.new_zeros(classes * classes)
            row[others] = -root / (classes - 1)
            row[column] += root
            blocks["g2"].append(row)
    parts = {
        "class_g0": ["g0"],
        "class_g1": ["g1"],
        "class_g2": ["g2"],
        "class_g1_g2": ["g1", "g2"],
        "class_g0_g1_g2": ["g0", "g1", "g2"],
    }
    return torch.stack([row for name in parts[part] for row in blocks[name]])
