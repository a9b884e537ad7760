"""Curvature operators of the cross-entropy loss, as matrix-free linear operators.

For a network f(x; θ) ∈ R^C with cross-entropy loss ℓ_i(θ) = ℓ(f(x_i; θ), y_i) the
paper (eq. 4) splits the Hessian averaged over a split into two parts:

    H = Ave_i ∇²ℓ_i(θ)                                         ("hessian")
      = Ave_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i                     ("gradient_covariance", G)
      + Ave_i Σ_c (∂ℓ_i/∂f_c) ∇²f_c(x_i; θ)                      ("prediction_hessian", R)

with J_i = ∂f(x_i; θ)/∂θ and p_i = softmax(f(x_i; θ)). Each operator here multiplies a
flat vector v ∈ R^p (p = number of trainable parameters, concatenated in
``model.named_parameters()`` order) without ever forming a p×p matrix:

* H v   — forward-over-reverse: ``jvp(grad(Σ_i ℓ_i), v)``.
* G v   — ``Jᵀ (diag p − p pᵀ) J v`` with one ``jvp`` (J v) and one ``vjp`` (Jᵀ u).
* R v   — ``jvp(grad(Σ_i ⟨g_i, f_i⟩), v)`` with g_i = p_i − e_{y_i} held fixed, i.e. the
  Hessian of the predictions weighted by ∂ℓ/∂f, computed directly (not as H v − G v).

The average is over every example of the split: per-batch results are summed and divided
by the number of examples, so the result does not depend on the batch size. The model is
evaluated in eval mode (BatchNorm uses its running statistics, so the loss is a sum of
per-example terms); parameters with ``requires_grad=False`` are held fixed and left out.
Memory is O(p + one batch of activations). With ``distributed=True`` each rank of a
torch.distributed job holds a shard of the split and the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.utils.data import DataLoader, Dataset

from hspec.errors import HspecError

COMPONENTS = ("hessian", "gradient_covariance", "prediction_hessian")
DEFAULT_BATCH_SIZE = 512

Params = dict[str, Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the duration, then restore each one's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class CurvatureOperator:
    """A symmetric p×p curvature matrix of a model on a data split, applied matrix-free.

    Subclasses implement :meth:`_batch_function`, the *sum* over one batch of the
    per-example matrices applied to a tangent (a dict shaped like the parameters).

    Attributes:
        dim: number of trainable parameters p (the operator is dim × dim).
        dtype, device: of the vectors :meth:`matvec` accepts and returns.
    """

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable], *,
                 dtype: torch.dtype, device: torch.device, distributed: bool = False,
                 block_size: int = 1) -> None:
        if distributed and not dist.is_initialized():
            raise HspecError("distributed: torch.distributed is not initialized (launch "
                             "with torchrun and call hspec.distributed.init_from_env())")
        if not isinstance(block_size, int) or block_size < 1:
            raise HspecError(f"block_size: must be a positive integer, got {block_size!r}")
        self.distributed = distributed
        self.block_size = block_size
        self.model = model
        self.dtype = dtype
        self.device = device
        self._batches = batches
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise HspecError("model: it has no parameter with requires_grad=True")
        frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        self.params: Params = {n: self._cast(p) for n, p in trainable.items()}
        self.constants: Params = {n: self._cast(t) for n, t in
                                  {**frozen, **dict(model.named_buffers())}.items()}
        self._shapes = [p.shape for p in self.params.values()]
        self._numels = [p.numel() for p in self.params.values()]
        self.dim = sum(self._numels)

    def _cast(self, t: Tensor) -> Tensor:
        t = t.detach().to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    # -- vectors <-> parameter dicts -------------------------------------------------
    def _unflatten(self, v: Tensor) -> Params:
        chunks = torch.split(v, self._numels)
        return {n: c.view(s) for n, c, s in zip(self.params, chunks, self._shapes)}

    @staticmethod
    def _flatten(tangent: Params) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tangent.values()])

    def _check_vectors(self, v: Tensor, name: str, ndim: int) -> None:
        if not isinstance(v, Tensor):
            raise HspecError(f"{name}: expected a torch.Tensor, got {type(v).__name__}")
        if v.ndim != ndim or v.shape[0] != self.dim:
            want = "(dim,)" if ndim == 1 else "(dim, k)"
            raise HspecError(f"{name}: expected shape {want} with dim={self.dim}, "
                             f"got {tuple(v.shape)}")
        if v.dtype != self.dtype:
            raise HspecError(f"{name}: dtype {v.dtype} does not match the operator's "
                             f"{self.dtype}")
        if v.device != self.device:
            raise HspecError(f"{name}: device {v.device} does not match the operator's "
                             f"{self.device}")

    # -- the model as a function of its trainable parameters -------------------------
    def logits(self, params: Params, x: Tensor) -> Tensor:
        """f(x; θ) with θ = ``params`` and the frozen parameters and buffers fixed."""
        return functional_call(self.model, {**params, **self.constants}, (x,))

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        """tangent ↦ Σ over the batch (x, y) of the per-example matrices applied to it;
        what depends on the batch alone is computed once, for every column."""
        raise NotImplementedError

    def _block_product(self, product: Callable[[Params], Params], V: Tensor) -> Tensor:
        """``product`` applied to the columns of V: one vectorized (vmap) pass."""
        if V.shape[1] == 1:
            return self._flatten(product(self._unflatten(V[:, 0])))[:, None]
        k = V.shape[1]
        rows = torch.split(V, self._numels)
        tangents = {n: r.T.reshape(k, *s) for n, r, s in zip(self.params, rows, self._shapes)}
        products = vmap(product)(tangents)
        return torch.cat([p.reshape(k, -1) for p in products.values()], dim=1).T

    def _iter_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self._batches():
            x = x.to(self.device)
            yield (x.to(self.dtype) if x.is_floating_point() else x), y.to(self.device)

    # -- public interface ------------------------------------------------------------
    def matmat(self, V: Tensor) -> Tensor:
        """A V for V of shape (dim, k): one pass over the data; per batch, the columns go
        through in vectorized blocks of ``block_size`` (memory grows with the block)."""
        self._check_vectors(V, "V", 2)
        blocks = torch.split(torch.arange(V.shape[1], device=V.device), self.block_size)
        out = torch.zeros_like(V)
        count = 0
        with eval_mode(self.model):
            for x, y in self._iter_batches():
                count += x.shape[0]
                product = self._batch_function(x, y)
                for columns in blocks:
                    out[:, columns] += self._block_product(product, V[:, columns])
        if self.distributed:  # every rank holds a shard: sum the sums and the counts
            totals = torch.tensor([float(count)], dtype=torch.float64, device=out.device)
            dist.all_reduce(out)
            dist.all_reduce(totals)
            count = int(totals.item())
        if count == 0:
            raise HspecError("data: the split has no examples")
        return out / count

    def matvec(self, v: Tensor) -> Tensor:
        """A v for a flat vector v of shape (dim,)."""
        self._check_vectors(v, "v", 1)
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if v.ndim == 1 else self.matmat(v)


class Hessian(CurvatureOperator):
    """H v = Ave_i ∇²ℓ_i(θ) v (paper eq. 2–3), by forward-over-reverse differentiation."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        def loss(params: Params) -> Tensor:
            return nn.functional.cross_entropy(self.logits(params, x), y, reduction="sum")

        return lambda tangent: jvp(grad(loss), (self.params,), (tangent,))[1]


class GradientCovariance(CurvatureOperator):
    """G v = Ave_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i v: the Gauss–Newton term of eq. 4,
    the paper's "covariance of gradients" (ℓ'' of cross-entropy is diag p − p pᵀ).
    Per batch, one forward pass gives p and the pullback Jᵀ; per vector, a jvp gives J v."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        def f(params: Params) -> Tensor:
            return self.logits(params, x)

        out, pullback = vjp(f, self.params)
        prob = torch.softmax(out.detach(), dim=-1)

        def product(tangent: Params) -> Params:
            jv = jvp(f, (self.params,), (tangent,))[1]
            return pullback(prob * jv - prob * (prob * jv).sum(-1, keepdim=True))[0]

        return product


class PredictionHessian(CurvatureOperator):
    """R v = Ave_i Σ_c g_ic ∇²f_c(x_i; θ) v with g_i = ∂ℓ_i/∂f = p_i − e_{y_i} held fixed:
    the paper's "averaged Hessian of predictions" (first term of eq. 4)."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        with torch.no_grad():
            g = torch.softmax(self.logits(self.params, x), dim=-1)
            g[torch.arange(len(y), device=g.device), y] -= 1

        def weighted_logits(params: Params) -> Tensor:
            return (self.logits(params, x) * g).sum()

        return lambda tangent: jvp(grad(weighted_logits), (self.params,), (tangent,))[1]


_OPERATORS = {"hessian": Hessian, "gradient_covariance": GradientCovariance,
              "prediction_hessian": PredictionHessian}


def _batch_source(data, batch_size: int | None) -> Callable[[], Iterable]:
    """A callable returning a fresh iterable of (inputs, targets) batches."""
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise HspecError("batch_size: cannot be given with a DataLoader "
                             "(the DataLoader sets its own batch size)")
        return lambda: data
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or size < 1:
        raise HspecError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=size, shuffle=False)
        return lambda: loader
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise HspecError(f"data: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
        if targets.dtype != torch.int64 or targets.ndim != 1:
            raise HspecError("data: targets must be a 1-D int64 tensor of class indices, "
                             f"got dtype {targets.dtype} and shape {tuple(targets.shape)}")
        return lambda: zip(inputs.split(size), targets.split(size))
    raise HspecError("data: expected an (inputs, targets) pair of tensors, a torch "
                     f"Dataset or a DataLoader, got {type(data).__name__}")


def curvature_operator(model: nn.Module, data, component: str = "hessian", *,
                       batch_size: int | None = None, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None,
                       distributed: bool = False, block_size: int = 1) -> CurvatureOperator:
    """The averaged curvature matrix of ``model`` on ``data`` as a linear operator.

    Args:
        model: a classifier returning logits of shape (batch, C); trained with
            cross-entropy. It is evaluated in eval mode; its training flag is restored.
        data: an ``(inputs, targets)`` pair of tensors, a torch ``Dataset`` or a
            ``DataLoader`` yielding such pairs (targets: int64 class indices).
        component: ``"hessian"`` (H), ``"gradient_covariance"`` (G) or
            ``"prediction_hessian"`` (R); H = G + R (paper eq. 4).
        batch_size: examples per forward pass (default 512); any value gives the
            same average.
        dtype: floating dtype of the whole computation (default float32).
        device: where the products run (default: the device of the model's parameters).
        distributed: ``data`` is this rank's shard of the split (see
            :mod:`hspec.distributed`); products are summed over all ranks with an
            all-reduce and divided by the total count, so every rank gets A v.
        block_size: columns of ``matmat`` pushed through one vectorized (vmap) pass;
            faster for several vectors, at block_size × the activation memory.

    Returns:
        A :class:`CurvatureOperator` with ``.dim``, ``.matvec(v)`` and ``.matmat(V)``.
    """
    if component not in _OPERATORS:
        raise HspecError(f"component: unknown {component!r}; valid: {', '.join(COMPONENTS)}")
    if dtype is None:
        dtype = torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HspecError(f"dtype: must be a floating torch.dtype, got {dtype!r}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report
    return _OPERATORS[component](model, _batch_source(data, batch_size),
                                 dtype=dtype, device=device, distributed=distributed,
                                 block_size=block_size)
