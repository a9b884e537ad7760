"""Cross-entropy and its derivatives in the logits, accurate when the softmax saturates.

The paper's nets fit their training sets, so on the train split p_{i,r} = max_c p_{ic}
is close to 1 (1 − p_r ~ 1e-4 to 1e-8 after training). The textbook forms of the
derivatives of ℓ(f, y) = log Σ_c e^{f_c} − f_y,

    ∂ℓ/∂f = p − e_y,        (diag p − p pᵀ) u = p ⊙ (u − pᵀu),

then compute 1 − p_r as a difference of nearly equal numbers: float32 keeps only
ε/(1 − p_r) of relative accuracy (ε = 6e-8), i.e. none at 1 − p_r ~ 1e-7. The same
cancellation happens inside automatic differentiation of ``torch.nn.functional.cross_entropy``
(softmax's backward is p ⊙ (g − pᵀg)), and so in H v, G v and R v of a trained net.

Here every quantity is written in the shifted logits w = f − f_r (w_r = 0, r = argmax_c f_c),
where the saturated class drops out:

    ℓ(f, y) = log(1 + Σ_{c≠r} e^{w_c}) + ⟨e_r − e_y, f⟩,

a log1p of a sum of positive terms plus a linear term whose coefficient vector is exactly
zero when r = y. Its derivatives, by automatic differentiation or in closed form, are sums
of small terms of one sign: ∂ℓ/∂f_c = p_c − [c = y] for c ≠ r and −Σ_{c≠r} p_c + [r ≠ y]
for c = r; and because (diag p − p pᵀ) annihilates constant vectors,

    (diag p − p pᵀ) u = p ⊙ (w − pᵀw),   w = u − u_r,

with pᵀw = Σ_{c≠r} p_c w_c small whenever p_r is close to 1. The results agree with the
textbook forms in exact arithmetic (checked against float64 in tests/test_loss.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad


def _top(logits: Tensor) -> Tensor:
    """r = argmax_c f_c row by row, shape (batch, 1), for ``gather`` (no gradient flows)."""
    return logits.detach().argmax(-1, keepdim=True)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Σ_i ℓ(f_i, y_i) for logits f of shape (batch, C) and int64 targets y of shape (batch,),
    in the shifted form of the module docstring (its derivatives of every order keep
    float32 accuracy when the softmax saturates)."""
    top = _top(logits)
    rest = torch.exp(logits - logits.gather(-1, top)).scatter(-1, top, 0.0).sum(-1)
    margin = torch.zeros_like(logits).scatter(-1, top, 1.0) - torch.nn.functional.one_hot(
        targets, logits.shape[-1]
    ).to(logits.dtype)
    return (torch.log1p(rest) + (margin * logits).sum(-1)).sum()


def logit_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """g_i = ∂ℓ(f_i, y_i)/∂f_i = p_i − e_{y_i}, shape (batch, C), without cancellation."""
    return grad(cross_entropy)(logits.detach(), targets)


def logit_hessian_product(logits: Tensor, u: Tensor) -> Tensor:
    """(diag p_i − p_i p_iᵀ) u_i row by row (ℓ's Hessian in the logits, which does not
    depend on y), as p ⊙ (w − pᵀw) with w = u − u_r: no cancellation at p_r → 1."""
    prob = torch.softmax(logits.detach(), dim=-1)
    w = u - u.gather(-1, _top(logits))
    return prob * (w - (prob * w).sum(-1, keepdim=True))
