"""Curvature operators of the cross-entropy loss, as matrix-free linear operators.

For a network f(x; θ) ∈ R^C with cross-entropy loss ℓ_i(θ) = ℓ(f(x_i; θ), y_i) the
paper (eq. 4) splits the Hessian averaged over a split into two parts:

    H = Ave_i ∇²ℓ_i(θ)                                         ("hessian")
      = Ave_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i                     ("gradient_covariance", G)
      + Ave_i Σ_c (∂ℓ_i/∂f_c) ∇²f_c(x_i; θ)                      ("prediction_hessian", R)

with J_i = ∂f(x_i; θ)/∂θ and p_i = softmax(f(x_i; θ)). Each operator here multiplies a
flat vector v ∈ R^p (p = number of trainable parameters, concatenated in
``model.named_parameters()`` order) without ever forming a p×p matrix:

* H v   — the Hessian-vector product of φ = Σ_i ℓ_i (see :func:`second_order_product`).
* G v   — ``Jᵀ (diag p − p pᵀ) J v``: J v by a ``jvp`` whose primal pass is recorded for
  the ``vjp`` that gives Jᵀ u (one forward, one backward).
* R v   — the Hessian-vector product of φ = Σ_i ⟨g_i, f_i⟩ with g_i = p_i − e_{y_i} held
  fixed, i.e. the Hessian of the predictions weighted by ∂ℓ/∂f, computed directly (not as
  H v − G v).
* the parts of G = G0 + G1 + G2 + G_within by the class means of the gradients (Papyan
  2019, 2020): :class:`ClassStructure`, the maths in :mod:`hspec.curvature.class_structure`.

ℓ, g_i and (diag p − p pᵀ) u come from :mod:`hspec.curvature.loss`, in forms that keep float32
accuracy when the softmax saturates (1 − max_c p_c → 0 on a fitted train split), where
the textbook forms, torch's cross_entropy included, lose it all.

A Hessian-vector product ∇²φ(θ) v has three exact forms (``hvp=``), equal up to rounding
but not in cost. Per linear layer y = W x of a gradient pass (3 matrix products: W x,
Wᵀ δ, δ xᵀ) they take:

* ``"reverse-over-forward"``: ∇_θ ⟨∇φ(θ), v⟩ = ``grad(θ ↦ jvp(φ, θ, v))``: the primal and
  tangent forward (3) and one backward through both (5) — 8 products, 8/3 of a gradient;
* ``"forward-over-reverse"``: ``jvp(grad(φ), θ, v)``: 9 (the primal gradient δ xᵀ is
  computed and thrown away);
* ``"reverse-over-reverse"``: ``vjp(grad(φ), θ)`` once per batch (3, with the graph of
  the gradient kept), then the pullback of v (6): 9 for one vector, but only 6 for each
  further column of a ``matmat``, which reuses the per-batch forward and backward.

Every form takes at least 8/3 of a gradient pass on an MLP's hidden layers: an exact
H v cannot beat ~2.6× a gradient in arithmetic. Which form is fastest in time depends on
the device's kernels (``hvp="auto"``, :data:`AUTO_HVP`).

The average is over every example of the split: per-batch results are summed and divided
by the number of examples, so the result does not depend on the batch size. The model is
evaluated in eval mode (BatchNorm uses its running statistics, so the loss is a sum of
per-example terms); parameters with ``requires_grad=False`` are held fixed and left out.
Memory is O(p + one batch of activations). With ``distributed=True`` each rank of a
torch.distributed job holds a shard of the split and the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.utils.data import DataLoader, Dataset

from hspec import settings
from hspec.curvature.blocks import select_parameters
from hspec.curvature.class_structure import (
    CLASS_COMPONENTS,
    class_coefficients,
    class_means,
    coefficients,
    factor_product,
    factor_transpose_product,
)
from hspec.curvature.loss import cross_entropy, logit_gradient, logit_hessian_product
from hspec.errors import HspecError
from hspec.numerics.linear_operator import SymmetricOperator, check_dtype

#: the components of paper eq. 4, then the parts of G of :mod:`hspec.curvature.class_structure`
EQ4_COMPONENTS = ("hessian", "gradient_covariance", "prediction_hessian")
COMPONENTS = EQ4_COMPONENTS + CLASS_COMPONENTS
HVP_MODES = ("reverse-over-forward", "forward-over-reverse", "reverse-over-reverse")
#: ``hvp="auto"``: the mode measured fastest on each kind of device (benchmarks/README.md):
#: on one CPU core reverse-over-forward, the one with the fewest matrix products (fastest
#: on cnn, VGG11 and ResNet18, within 3% of the fastest on mlp); on an H200,
#: forward-over-reverse (2.2–2.5 s and 6.4 s per product for VGG11 and ResNet18, against
#: 2.5 s and 12.9 s by PyHessian's double backward; reverse-over-forward not yet measured
#: there: benchmarks/gpu.sh does).
AUTO_HVP = {"cpu": "reverse-over-forward", "cuda": "forward-over-reverse"}
#: the precision policies of the command line and the workflow, as curvature_operator arguments
PRECISIONS = {
    "float32": {"dtype": torch.float32, "tf32": False},
    "tf32": {"dtype": torch.float32, "tf32": True},
    "float64": {"dtype": torch.float64, "tf32": False},
}
DEFAULT_BATCH_SIZE: int = settings.SPECTRUM["batch_size"]  # the workflow's spectrum.batch_size
SUPPORTED_DATA = (
    "supported: an (inputs, targets) pair of tensors, or a Dataset or "
    "DataLoader yielding such pairs"
)

Params = dict[str, Tensor]


def second_order_product(
    phi: Callable[[Params], Tensor], params: Params, mode: str
) -> Callable[[Params], Params]:
    """v ↦ ∇²φ(θ) v at θ = ``params`` for a scalar φ, in one of :data:`HVP_MODES` (see the
    module docstring for their costs). What does not depend on v is done here, once."""
    if mode == "reverse-over-forward":
        return lambda v: grad(lambda p: jvp(phi, (p,), (v,))[1])(params)
    if mode == "forward-over-reverse":
        return lambda v: jvp(grad(phi), (params,), (v,))[1]
    _, pullback = vjp(grad(phi), params)
    return lambda v: pullback(v)[0]


@contextlib.contextmanager
def float32_matmul(device: torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, let float32 matrix products and convolutions use TF32 tensor cores (10-bit
    mantissa inputs, float32 accumulation) or not, for the duration; the flags are restored.
    Off CUDA this does nothing (TF32 is an NVIDIA tensor-core format)."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


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


class CurvatureOperator(SymmetricOperator):
    """A symmetric p×p curvature matrix of a model on a data split, applied matrix-free.

    Subclasses implement :meth:`_batch_function`, the *sum* over one batch of the
    per-example matrices applied to a tangent (a dict shaped like the parameters).
    Every batch is checked before it is used: an (inputs, targets) pair of tensors,
    int64 targets in [0, C) where C ≥ 2 is the width of the model's (N, C) logits
    (checked by one forward pass of the first batch, once).

    Attributes:
        dim: number of trainable parameters p (the operator is dim × dim).
        dtype, device: of the vectors :meth:`matvec` accepts and returns.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Callable[[], Iterable],
        *,
        dtype: torch.dtype,
        device: torch.device,
        distributed: bool = False,
        block_size: int = 1,
        hvp: str = "auto",
        tf32: bool = False,
        compile: bool = False,
        params=None,
    ) -> None:
        if distributed and not dist.is_initialized():
            raise HspecError(
                "distributed: torch.distributed is not initialized (launch "
                "with torchrun and call hspec.curvature.distributed.init_from_env())"
            )
        if not isinstance(block_size, int) or block_size < 1:
            raise HspecError(f"block_size: must be a positive integer, got {block_size!r}")
        if hvp == "auto":
            hvp = AUTO_HVP.get(device.type, "forward-over-reverse")
        if hvp not in HVP_MODES:
            raise HspecError(f"hvp: unknown {hvp!r}; valid: auto, {', '.join(HVP_MODES)}")
        if tf32 and dtype != torch.float32:
            raise HspecError(f"tf32: only applies to float32, not {dtype}")
        self.hvp = hvp
        self.tf32 = tf32
        self._compiled = torch.compile(self._batch_block, dynamic=False) if compile else None
        self.distributed = distributed
        self.block_size = block_size
        self.model = model
        self.dtype = check_dtype(dtype)  # _cast needs it before the base's __init__
        self.device = device
        self._batches = batches
        self._classes: int | None = None
        self._data_checked = False  # set by the first complete pass over the data
        #: the block's parameter names, in the order of the operator's vectors
        self.param_names: list[str] = select_parameters(model, params)
        chosen = set(self.param_names)
        named = dict(model.named_parameters())
        self.params: Params = {n: self._cast(named[n]) for n in self.param_names}
        held = {n: p for n, p in named.items() if n not in chosen}  # frozen or outside the block
        self.constants: Params = {
            n: self._cast(t) for n, t in {**held, **dict(model.named_buffers())}.items()
        }
        self._shapes = [p.shape for p in self.params.values()]
        self._numels = [p.numel() for p in self.params.values()]
        super().__init__(sum(self._numels), dtype=dtype, device=device)

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

    def _batch_block(self, x: Tensor, y: Tensor, V: Tensor) -> Tensor:
        """Σ over the batch (x, y) of the per-example matrices times the columns of V."""
        return self._block_product(self._batch_function(x, y), V)

    def _iter_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches on the device, each checked to be an (inputs, targets) pair; the
        first complete pass also checks the targets against C (the data are the same at
        every pass, as a deterministic operator needs, so later passes skip that check
        and its device sync)."""
        check = not self._data_checked
        for batch in self._batches():
            x, y = _check_pair(batch)
            x = x.to(self.device)
            x, y = (x.to(self.dtype) if x.is_floating_point() else x), y.to(self.device)
            if check:
                self._check_targets(x, y)
            yield x, y
        self._data_checked = True

    def _num_classes(self, x: Tensor) -> int:
        """C of the model's logits, from one forward pass of the first batch (once)."""
        if self._classes is None:
            with torch.no_grad():
                out = self.logits(self.params, x)
            if not isinstance(out, Tensor):
                raise HspecError(
                    f"model: returned a {type(out).__name__}; hspec needs a "
                    "model returning one (N, C) tensor of logits"
                )
            if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
                raise HspecError(
                    f"model: returned shape {tuple(out.shape)} for a batch of "
                    f"{x.shape[0]}; hspec needs logits of shape (N, C), C ≥ 2"
                )
            self._classes = out.shape[1]
        return self._classes

    def _check_targets(self, x: Tensor, y: Tensor) -> None:
        classes = self._num_classes(x)
        if y.numel() == 0:
            return
        low, high = torch.aminmax(y)
        low, high = int(low), int(high)
        if low < 0 or high >= classes:
            raise HspecError(
                f"data: target {low if low < 0 else high} is not a class index "
                f"of the model's {classes} outputs (0 to {classes - 1})"
            )

    def _matmat(self, V: Tensor) -> Tensor:
        """A V for V of shape (dim, k): one pass over the data; per batch, the columns go
        through in vectorized blocks of ``block_size`` (memory grows with the block). The
        per-batch work is shared by the blocks, except when compiled (then per block)."""
        blocks = torch.split(torch.arange(V.shape[1], device=V.device), self.block_size)
        out = torch.zeros_like(V)
        count = 0
        with eval_mode(self.model), float32_matmul(self.device, self.tf32):
            for x, y in self._iter_batches():
                count += x.shape[0]
                if self._compiled is not None:
                    for columns in blocks:
                        out[:, columns] += self._compiled(x, y, V[:, columns])
                    continue
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


class Hessian(CurvatureOperator):
    """H v = Ave_i ∇²ℓ_i(θ) v (paper eq. 2–3): the second-order product of the batch loss."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        def loss(params: Params) -> Tensor:
            return cross_entropy(self.logits(params, x), y)

        return second_order_product(loss, self.params, self.hvp)


class GradientCovariance(CurvatureOperator):
    """G v = Ave_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i v: the Gauss–Newton term of eq. 4,
    the paper's "covariance of gradients" (ℓ'' of cross-entropy is diag p − p pᵀ).
    Per vector, one forward pass carries the logits f and J v together (a jvp, recorded
    for the vjp, with J v as an auxiliary output) and one backward through f alone pulls
    u = (diag p − p pᵀ) J v back to Jᵀ u: 5 matrix products per linear layer against a
    gradient pass's 3, where a separate vjp and jvp would take 6."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        def f(params: Params) -> Tensor:
            return self.logits(params, x)

        def product(tangent: Params) -> Params:
            def logits_and_jv(params: Params) -> tuple[Tensor, Tensor]:
                return jvp(f, (params,), (tangent,))

            out, pullback, jv = vjp(logits_and_jv, self.params, has_aux=True)
            return pullback(logit_hessian_product(out, jv))[0]

        return product


class PredictionHessian(CurvatureOperator):
    """R v = Ave_i Σ_c g_ic ∇²f_c(x_i; θ) v with g_i = ∂ℓ_i/∂f = p_i − e_{y_i} held fixed:
    the paper's "averaged Hessian of predictions" (first term of eq. 4)."""

    def _batch_function(self, x: Tensor, y: Tensor) -> Callable[[Params], Params]:
        with torch.no_grad():
            g = logit_gradient(self.logits(self.params, x), y)

        def weighted_logits(params: Params) -> Tensor:
            return (self.logits(params, x) * g).sum()

        return second_order_product(weighted_logits, self.params, self.hvp)


class ClassStructure(CurvatureOperator):
    """One part of G = G0 + G1 + G2 + G_within, the class/cross-class structure of
    :mod:`hspec.curvature.class_structure` (Papyan 2019, 2020), ``part`` one of
    :data:`~hspec.curvature.class_structure.CLASS_COMPONENTS`.

    A product takes two passes over the data, O(p + one batch) memory whatever C is:
    first a forward with a jvp per batch gives t_i = A_i J_i v, summed per class into the
    C×C matrix S (and the class counts n_c), so batches may split classes; then M = S/n_c
    and a second pass pulls the per-example cotangents A_iᵀ z_i back by one vjp per batch.
    The second pass is a forward and a vjp for the between-class parts and a whole G v (the
    jvp again, for t_i) for ``class_within``: a product costs about two G v passes at most
    (a G v is one forward with a jvp and one vjp). Under ``distributed`` S, the counts and
    the result are all-reduced. ``compile`` and ``hvp`` do not apply.
    """

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable], *, part: str, **kw):
        if kw.get("compile"):
            raise HspecError(f"compile: not supported for the component {part!r}")
        super().__init__(model, batches, **kw)
        self.part = part

    def _columns(self, fn: Callable, V: Tensor, *args: Tensor):
        """fn(tangent, *column args) for each column of V (args: one row per column),
        stacked on a leading axis of columns; one vectorized (vmap) pass."""
        rows = torch.split(V, self._numels)
        tangents = {n: r.T.reshape(-1, *s) for n, r, s in zip(self.params, rows, self._shapes)}
        if V.shape[1] == 1:
            out = fn({n: t[0] for n, t in tangents.items()}, *(a[0] for a in args))
            return out[None] if isinstance(out, Tensor) else {n: t[None] for n, t in out.items()}
        return vmap(fn)(tangents, *args)

    def _flat_columns(self, products: Params) -> Tensor:
        k = next(iter(products.values())).shape[0]
        return torch.cat([p.reshape(k, -1) for p in products.values()], dim=1).T

    def _sums(self, V: Tensor, blocks) -> tuple[Tensor, Tensor]:
        """First pass: S (k, C, C) of the columns of V and the class counts (C,)."""
        sums, counts = None, None
        for x, y in self._iter_batches():
            classes = self._num_classes(x)
            if sums is None:
                sums = V.new_zeros(V.shape[1], classes, classes)
                counts = torch.zeros(classes, dtype=torch.int64, device=self.device)
            counts += torch.bincount(y, minlength=classes)

            def batch_sums(tangent: Params, x=x, y=y, classes=classes) -> Tensor:
                out, jv = jvp(lambda p: self.logits(p, x), (self.params,), (tangent,))
                return coefficients(factor_product(out, jv), y, classes)

            for columns in blocks:
                sums[columns] += self._columns(batch_sums, V[:, columns])
        if sums is None:  # C is unknown without a batch (also on a rank with an empty shard)
            where = "this rank's shard of the split" if self.distributed else "the split"
            raise HspecError(f"data: {where} has no examples")
        if self.distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return sums, counts

    def _pullbacks(self, V: Tensor, means: Tensor, blocks) -> Tensor:
        """Second pass: Σ_i J_iᵀ A_iᵀ z_i for each column (z_i from ``means``, (k, C, C))."""
        out = torch.zeros_like(V)
        within = self.part == "class_within"
        weights = means if within else class_coefficients(self.part, means)
        for x, y in self._iter_batches():
            if within:

                def product(tangent: Params, m: Tensor, x=x, y=y) -> Params:
                    def logits_and_jv(params: Params) -> tuple[Tensor, Tensor]:
                        return jvp(lambda p: self.logits(p, x), (params,), (tangent,))

                    f, pullback, jv = vjp(logits_and_jv, self.params, has_aux=True)
                    z = factor_product(f, jv) - m[y]
                    return pullback(factor_transpose_product(f, z))[0]

            else:
                f, pullback = vjp(lambda p, x=x: self.logits(p, x), self.params)

                def product(tangent: Params, m: Tensor, f=f, y=y, pullback=pullback) -> Params:
                    return pullback(factor_transpose_product(f, m[y]))[0]

            for columns in blocks:
                out[:, columns] += self._flat_columns(
                    self._columns(product, V[:, columns], weights[columns])
                )
        if self.distributed:
            dist.all_reduce(out)
        return out

    def _matmat(self, V: Tensor) -> Tensor:
        """The part times V (dim, k): two passes over the data, the columns in vectorized
        blocks of ``block_size`` (memory grows with the block)."""
        blocks = torch.split(torch.arange(V.shape[1], device=V.device), self.block_size)
        with eval_mode(self.model), float32_matmul(self.device, self.tf32):
            sums, counts = self._sums(V, blocks)
            total = int(counts.sum())
            if total == 0:
                raise HspecError("data: the split has no examples")
            return self._pullbacks(V, class_means(sums, counts), blocks) / total


def _check_pair(batch) -> tuple[Tensor, Tensor]:
    """A batch as (inputs, targets): two tensors, targets 1-D int64, one per input."""
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, Tensor) for t in batch)
    ):
        raise HspecError(
            f"data: a batch is a {type(batch).__name__}, not an (inputs, "
            f"targets) pair of tensors; {SUPPORTED_DATA}"
        )
    x, y = batch
    if y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise HspecError(
            "data: targets must be a 1-D int64 tensor of class indices, one "
            f"per input, got dtype {y.dtype} and shape {tuple(y.shape)} for "
            f"{x.shape[0]} inputs"
        )
    return x, y


_OPERATORS = {
    "hessian": Hessian,
    "gradient_covariance": GradientCovariance,
    "prediction_hessian": PredictionHessian,
    **{part: functools.partial(ClassStructure, part=part) for part in CLASS_COMPONENTS},
}


def _batch_source(
    data, batch_size: int | None, resident: tuple[torch.device, torch.dtype] | None
) -> Callable[[], Iterable]:
    """A callable returning a fresh iterable of (inputs, targets) batches; with ``resident``
    = (device, dtype) a pair of tensors is moved and cast there once, not per product."""
    if resident is not None and not isinstance(data, (tuple, list)):
        raise HspecError(
            "resident: needs data as an (inputs, targets) pair of tensors, "
            f"got {type(data).__name__}"
        )
    if isinstance(data, DataLoader):
        if batch_size is not None:
            raise HspecError(
                "batch_size: cannot be given with a DataLoader "
                "(the DataLoader sets its own batch size)"
            )
        return lambda: data
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or size < 1:
        raise HspecError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=size, shuffle=False)
        return lambda: loader
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise HspecError(f"data: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
        if targets.dtype != torch.int64 or targets.ndim != 1:
            raise HspecError(
                "data: targets must be a 1-D int64 tensor of class indices, "
                f"got dtype {targets.dtype} and shape {tuple(targets.shape)}"
            )
        if resident is not None:
            device, dtype = resident
            inputs = inputs.to(device, dtype if inputs.is_floating_point() else None)
            targets = targets.to(device)
        return lambda: zip(inputs.split(size), targets.split(size))
    raise HspecError(f"data: got a {type(data).__name__}; {SUPPORTED_DATA}")


def curvature_operator(
    model: nn.Module,
    data,
    component: str = "hessian",
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    distributed: bool = False,
    block_size: int = 1,
    hvp: str = "auto",
    tf32: bool = False,
    resident: bool = False,
    compile: bool = False,
    params=None,
) -> CurvatureOperator:
    """The averaged curvature matrix of ``model`` on ``data`` as a linear operator.

    Args:
        model: a classifier returning one tensor of logits of shape (batch, C), C ≥ 2;
            trained with cross-entropy. It is evaluated in eval mode; its training flag is restored.
        data: an ``(inputs, targets)`` pair of tensors, a torch ``Dataset`` or a
            ``DataLoader`` yielding such pairs (targets: int64 class indices in [0, C)).
            Each batch is checked when used: another kind of batch, a target outside
            [0, C) or logits not of shape (batch, C) raise one error.
        component: ``"hessian"`` (H), ``"gradient_covariance"`` (G) or
            ``"prediction_hessian"`` (R); H = G + R (paper eq. 4). Or a part of
            G = G0 + G1 + G2 + G_within (Papyan 2019, 2020; :mod:`hspec.curvature.class_structure`):
            ``"class_g0"``, ``"class_g1"``, ``"class_g2"``, ``"class_g1_g2"`` (the between-class
            part), ``"class_g0_g1_g2"`` (all class means) or ``"class_within"``; each product
            of these takes two passes over the data.
        batch_size: examples per forward pass (default: hspec.settings, 1000); any value gives the
            same average.
        dtype: dtype of the whole computation: float32 (default) or float64 (Lanczos
            needs at least float32's precision; float16 and bfloat16 are refused).
        device: where the products run (default: the device of the model's parameters).
        distributed: ``data`` is this rank's shard of the split (see
            :mod:`hspec.curvature.distributed`); products are summed over all ranks with an
            all-reduce and divided by the total count, so every rank gets A v.
        block_size: columns of ``matmat`` pushed through one vectorized (vmap) pass;
            faster for several vectors, at block_size × the activation memory: the knob
            that keeps a block product under a memory budget.
        hvp: how H v and R v are differentiated, one of :data:`HVP_MODES`, or ``"auto"``
            (default): the device's fastest as measured (:data:`AUTO_HVP`). All are exact
            and agree to rounding; ``"reverse-over-forward"`` takes the fewest matrix
            products for one vector, ``"reverse-over-reverse"`` the fewest per column of a
            block (see the module docstring and benchmarks/README.md). The mode used is
            ``.hvp`` of the result.
        tf32: float32 products on CUDA use TF32 tensor cores (faster, ~1e-4 relative
            error per product); False forces full float32 there, including convolutions
            (which PyTorch otherwise runs in TF32 by default). Ignored off CUDA.
        resident: move and cast the whole (inputs, targets) pair to ``device`` once, at
            construction, instead of each batch at each product.
        compile: ``torch.compile`` the per-batch product: a one-time compile (seconds to
            minutes, once per batch shape and block width) for faster products after it;
            pays only for long runs (benchmarks/README.md: torch.compile). All operators
            of a process share PyTorch's recompile limit
            (``torch._dynamo.config.recompile_limit``); past it products run eagerly.
        params: the block B of parameters the operator acts on (:mod:`hspec.curvature.blocks`):
            ``None`` (default: every trainable parameter), a list of parameter names, a
            regular expression (``re.fullmatch`` against the ``named_parameters()`` names) or
            a list of modules (their parameters). The operator is then the diagonal block
            H_BB (G_BB, R_BB) of the full matrix, every other parameter held fixed: its
            dimension is B's size, its vectors B's parameters in ``named_parameters()`` order
            (their names: ``.param_names``). A name or pattern selecting no trainable
            parameter raises one error naming it. Per-layer blocks:
            :func:`hspec.curvature.blocks.layer_blocks`.

    Returns:
        A :class:`CurvatureOperator` with ``.dim``, ``.matvec(v)`` and ``.matmat(V)``.
    """
    if component not in _OPERATORS:
        raise HspecError(f"component: unknown {component!r}; valid: {', '.join(COMPONENTS)}")
    dtype = check_dtype(torch.float32 if dtype is None else dtype)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report
    source = _batch_source(data, batch_size, (device, dtype) if resident else None)
    return _OPERATORS[component](
        model,
        source,
        dtype=dtype,
        device=device,
        distributed=distributed,
        block_size=block_size,
        hvp=hvp,
        tf32=tf32,
        compile=compile,
        params=params,
    )
