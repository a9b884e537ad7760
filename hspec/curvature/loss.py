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

The curvature operators see a loss through a :class:`Loss`: the sum over a batch, its
gradient in the outputs and its output-Hessian product, plus the number of examples the
average runs over (:func:`make_loss` picks one from ``loss=`` of
:func:`hspec.curvature.operators.curvature_operator`):

* :class:`CrossEntropy` — logits (N, C) with class indices (N,); or logits (B, T, V) with
  targets (B, T) where :data:`IGNORE_INDEX` (−100) marks tokens that are not counted: each
  counted token is one example. The forms above, so a saturated softmax keeps its accuracy.
* :class:`SquaredError` — ``"mse"``: ℓ_i = Σ_k (f_ik − t_ik)² summed over every non-batch
  entry of example i (``((out − target)**2).sum(-1)`` for (N, D) outputs), averaged over the
  N examples; ∇²_f ℓ = 2 I.
* :class:`PerExampleLoss` — a callable ``loss(output, target)`` returning one loss per
  example (shape (N,)): its output gradient by reverse mode and its output-Hessian product
  by forward-over-reverse on the output space. G = Ave_i J_iᵀ ∇²_f ℓ_i J_i is positive
  semi-definite only if ℓ is convex in the outputs (cross-entropy and squared error are).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, jvp

from hspec.errors import HspecError

#: targets of sequence cross-entropy equal to this are not counted (torch's default)
IGNORE_INDEX = -100


def _top(logits: Tensor) -> Tensor:
    """r = argmax_c f_c row by row, shape (batch, 1), for ``gather`` (no gradient flows)."""
    return logits.detach().argmax(-1, keepdim=True)


def cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Σ_i ℓ(f_i, y_i) (or Σ_i w_i ℓ(f_i, y_i) with ``weights``) for logits f of shape
    (batch, C) and int64 targets y of shape (batch,), in the shifted form of the module
    docstring (its derivatives of every order keep float32 accuracy when the softmax
    saturates)."""
    top = _top(logits)
    rest = torch.exp(logits - logits.gather(-1, top)).scatter(-1, top, 0.0).sum(-1)
    margin = torch.zeros_like(logits).scatter(-1, top, 1.0) - torch.nn.functional.one_hot(
        targets, logits.shape[-1]
    ).to(logits.dtype)
    terms = torch.log1p(rest) + (margin * logits).sum(-1)
    return (terms if weights is None else terms * weights).sum()


def logit_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """g_i = ∂ℓ(f_i, y_i)/∂f_i = p_i − e_{y_i}, shape (batch, C), without cancellation."""
    return grad(cross_entropy)(logits.detach(), targets)


def logit_hessian_product(logits: Tensor, u: Tensor) -> Tensor:
    """(diag p_i − p_i p_iᵀ) u_i row by row (ℓ's Hessian in the logits, which does not
    depend on y), as p ⊙ (w − pᵀw) with w = u − u_r: no cancellation at p_r → 1."""
    prob = torch.softmax(logits.detach(), dim=-1)
    w = u - u.gather(-1, _top(logits))
    return prob * (w - (prob * w).sum(-1, keepdim=True))


class Loss:
    """A loss summed over a batch, seen by the curvature operators. Subclasses implement
    :meth:`total` (Σ_i ℓ_i), :meth:`output_gradient` (∂Σℓ/∂f, held fixed for R) and
    :meth:`output_hessian_product` ((∇²_f Σℓ) u, for G); :meth:`count` is the number of
    examples of a batch and :meth:`check` the checks of values (once per batch, on the first
    pass over the data). Shapes are checked at every call (no device sync)."""

    name = "loss"

    def check_targets(self, targets: Tensor) -> None:
        """Checks of a targets tensor given with the data (before any forward pass)."""

    def check(self, output: Tensor, target) -> None:
        self.check_shapes(output, target)

    def check_shapes(self, output: Tensor, target) -> None:
        """Raise an HspecError unless ``output`` and ``target`` fit this loss."""

    def count(self, output: Tensor, target) -> int:
        return output.shape[0]

    def total(self, output: Tensor, target) -> Tensor:
        raise NotImplementedError

    def output_gradient(self, output: Tensor, target) -> Tensor:
        raise NotImplementedError

    def output_hessian_product(self, output: Tensor, target, u: Tensor) -> Tensor:
        raise NotImplementedError


class CrossEntropy(Loss):
    """Cross-entropy of (N, C) logits or of (B, T, V) sequence logits (module docstring)."""

    name = "cross_entropy"

    def check_targets(self, targets: Tensor) -> None:
        if targets.dtype != torch.int64 or targets.ndim not in (1, 2):
            raise HspecError(
                "data: targets must be a 1-D int64 tensor of class indices (or 2-D for "
                f"sequences), got dtype {targets.dtype} and shape {tuple(targets.shape)}"
            )

    def check_shapes(self, output: Tensor, target) -> None:
        if not isinstance(target, Tensor) or target.dtype != torch.int64:
            kind = target.dtype if isinstance(target, Tensor) else type(target).__name__
            raise HspecError(f"data: cross_entropy needs int64 class-index targets, got {kind}")
        if output.ndim == 3 or target.ndim == 2:
            if (
                output.ndim != 3
                or tuple(output.shape[:2]) != tuple(target.shape)
                or (output.shape[2] < 2)
            ):
                raise HspecError(
                    f"model: returned shape {tuple(output.shape)} for targets of shape "
                    f"{tuple(target.shape)}; sequence cross_entropy needs logits (B, T, V), "
                    "V ≥ 2, for targets (B, T)"
                )
            return
        if target.ndim != 1:
            raise HspecError(
                "data: targets must be a 1-D int64 tensor of class indices, one per "
                f"input, got shape {tuple(target.shape)}"
            )
        if output.ndim != 2 or output.shape[0] != target.shape[0] or output.shape[1] < 2:
            raise HspecError(
                f"model: returned shape {tuple(output.shape)} for a batch of "
                f"{target.shape[0]}; hspec needs logits of shape (N, C), C ≥ 2"
            )

    def check(self, output: Tensor, target: Tensor) -> None:
        self.check_shapes(output, target)
        counted = target[target != IGNORE_INDEX] if target.ndim == 2 else target
        if counted.numel() == 0:
            return
        low, high = (int(t) for t in torch.aminmax(counted))
        classes = output.shape[-1]
        if low < 0 or high >= classes:
            ignore = f" or {IGNORE_INDEX} (not counted)" if target.ndim == 2 else ""
            raise HspecError(
                f"data: target {low if low < 0 else high} is not a class index "
                f"of the model's {classes} outputs (0 to {classes - 1}){ignore}"
            )

    @staticmethod
    def _weights(output: Tensor, target: Tensor) -> Tensor | None:
        """1 for counted tokens, 0 for ignored ones, shape (B, T, 1); None for (N, C)."""
        return None if target.ndim == 1 else (target != IGNORE_INDEX).to(output.dtype)[..., None]

    def count(self, output: Tensor, target: Tensor) -> int:
        return target.shape[0] if target.ndim == 1 else int((target != IGNORE_INDEX).sum())

    def total(self, output: Tensor, target: Tensor) -> Tensor:
        self.check_shapes(output, target)
        if target.ndim == 1:
            return cross_entropy(output, target)
        flat = output.reshape(-1, output.shape[-1])
        weights = self._weights(output, target).reshape(-1)
        return cross_entropy(flat, target.clamp(min=0).reshape(-1), weights)

    def output_gradient(self, output: Tensor, target: Tensor) -> Tensor:
        self.check_shapes(output, target)
        weights = self._weights(output, target)
        if weights is None:
            return logit_gradient(output, target)
        safe = target.clamp(min=0)  # ignored tokens get weight 0
        return logit_gradient(output, safe) * weights

    def output_hessian_product(self, output: Tensor, target: Tensor, u: Tensor) -> Tensor:
        self.check_shapes(output, target)
        weights = self._weights(output, target)
        product = logit_hessian_product(output, u)
        return product if weights is None else product * weights


class SquaredError(Loss):
    """``"mse"``: ℓ_i = Σ (f_i − t_i)² over every non-batch entry of example i."""

    name = "mse"

    def check_targets(self, targets: Tensor) -> None:
        if not targets.is_floating_point():
            raise HspecError(f"data: mse needs floating-point targets, got {targets.dtype}")

    def check_shapes(self, output: Tensor, target) -> None:
        if not isinstance(target, Tensor) or not target.is_floating_point():
            kind = target.dtype if isinstance(target, Tensor) else type(target).__name__
            raise HspecError(f"data: mse needs floating-point targets, got {kind}")
        if output.ndim == 0 or output.shape != target.shape:
            raise HspecError(
                f"model: returned shape {tuple(output.shape)} for targets of shape "
                f"{tuple(target.shape)}; mse needs outputs of the targets' shape (N, ...)"
            )

    def total(self, output: Tensor, target: Tensor) -> Tensor:
        self.check_shapes(output, target)
        return (output - target).square().sum()

    def output_gradient(self, output: Tensor, target: Tensor) -> Tensor:
        self.check_shapes(output, target)
        return 2 * (output.detach() - target)

    def output_hessian_product(self, output: Tensor, target: Tensor, u: Tensor) -> Tensor:
        self.check_shapes(output, target)
        return 2 * u


class PerExampleLoss(Loss):
    """A user's ``loss(output, target) -> (N,)``, differentiated by torch.func."""

    def __init__(self, function: Callable[[Tensor, object], Tensor]) -> None:
        self.function = function
        self.name = getattr(function, "__name__", type(function).__name__)

    def check_shapes(self, output: Tensor, target) -> None:
        if output.ndim == 0:
            raise HspecError(f"model: returned a scalar; loss {self.name!r} needs outputs (N, ...)")

    def _values(self, output: Tensor, target) -> Tensor:
        self.check_shapes(output, target)
        values = self.function(output, target)
        if not isinstance(values, Tensor) or values.shape != output.shape[:1]:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise HspecError(
                f"loss: {self.name!r} returned {got} for outputs of shape "
                f"{tuple(output.shape)}; a loss callable must return one loss per example, "
                f"shape ({output.shape[0]},)"
            )
        return values

    def total(self, output: Tensor, target) -> Tensor:
        return self._values(output, target).sum()

    def output_gradient(self, output: Tensor, target) -> Tensor:
        return grad(self.total)(output.detach(), target)

    def output_hessian_product(self, output: Tensor, target, u: Tensor) -> Tensor:
        def gradient(f: Tensor) -> Tensor:
            return grad(self.total)(f, target)

        return jvp(gradient, (output.detach(),), (u,))[1]


LOSSES = ("cross_entropy", "mse")


def make_loss(loss) -> Loss:
    """The :class:`Loss` of ``"cross_entropy"``, ``"mse"`` or a per-example callable."""
    if loss == "cross_entropy":
        return CrossEntropy()
    if loss == "mse":
        return SquaredError()
    if callable(loss) and not isinstance(loss, str):
        return PerExampleLoss(loss)
    raise HspecError(
        f"loss: unknown {loss!r}; valid: {', '.join(LOSSES)} or a callable "
        "loss(output, target) returning one loss per example"
    )
