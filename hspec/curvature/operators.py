"""Curvature operators of a network's loss, as matrix-free linear operators.

For a network f(x; θ) ∈ R^C with loss ℓ_i(θ) = ℓ(f(x_i; θ), y_i) the paper (eq. 4,
cross-entropy) splits the Hessian averaged over a split into two parts:

    H = Ave_i ∇²ℓ_i(θ)                                         ("hessian")
      = Ave_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i                     ("gradient_covariance", G)
      + Ave_i Σ_c (∂ℓ_i/∂f_c) ∇²f_c(x_i; θ)                      ("prediction_hessian", R)

with J_i = ∂f(x_i; θ)/∂θ and p_i = softmax(f(x_i; θ)). For any loss (:mod:`hspec.curvature.loss`:
sequence cross-entropy, squared error, a per-example callable) the same split holds with
∇²_f ℓ_i in place of diag p_i − p_i p_iᵀ and ∂ℓ_i/∂f in place of p_i − e_{y_i}; G is positive
semi-definite when ℓ is convex in the outputs. Each operator here multiplies a
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
per-example terms); parameters with ``requires_grad=False``, and with ``params=`` those
outside the block (:mod:`hspec.curvature.blocks`), are held fixed and left out (in the
forward-mode passes those downstream of the block are dual with zero tangents,
:class:`BlockReach`, so that a block's product costs no more than the whole model's). A batch is
any structure a ``forward(model, batch) -> (output, target)`` understands (by default an
(inputs, targets) pair or a HuggingFace-style dict with ``"labels"``).
Memory is O(p + one batch of activations). With ``distributed=True`` each rank of a
torch.distributed job holds a shard of the split and the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
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
from hspec.curvature.loss import CrossEntropy, Loss, make_loss
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
    "supported: an (inputs, targets) pair of tensors, a dict of tensors with 'labels' "
    "(HuggingFace style), a Dataset or DataLoader yielding such batches, or a list of "
    "them; any other batch needs forward=(model, batch) -> (output, target)"
)
#: prefix of the model's names inside :class:`_Forward`
_MODEL = "model."

Params = dict[str, Tensor]


def second_order_product(
    phi: Callable[[Params, Params], Tensor],
    params: Params,
    mode: str,
    held: tuple[Params, Params] = ({}, {}),
) -> Callable[[Params], Params]:
    """v ↦ ∇²φ(θ) v at θ = ``params`` for a scalar φ(θ, h), in one of :data:`HVP_MODES`
    (see the module docstring for their costs). What does not depend on v is done here,
    once. ``held`` = (h, zero tangents): parameters φ depends on but is not differentiated
    by; the forward-mode passes make them dual with zero tangents (see :class:`BlockReach`)."""
    values, zeros = held
    if mode == "reverse-over-forward":
        return lambda v: grad(lambda p: jvp(phi, (p, values), (v, zeros))[1])(params)
    if mode == "forward-over-reverse":
        return lambda v: jvp(grad(phi), (params, values), (v, zeros))[1]
    _, pullback = vjp(lambda p: grad(phi)(p, values), params)
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


def default_forward(model: nn.Module, batch) -> tuple:
    """The ``forward`` used when none is given: ``(model(x), y)`` for an ``(x, y)`` pair of
    tensors, ``(model(**inputs), batch["labels"])`` for a dict batch (HuggingFace style:
    every key but ``"labels"`` is passed as a keyword argument). Targets are aligned with
    the outputs as given (no shift: a causal LM's labels are the next tokens,
    :func:`hspec.pipeline.transformer.next_token_labels`)."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise HspecError(
                f"data: a batch is a dict, not an (inputs, targets) pair of tensors; "
                f"{SUPPORTED_DATA} (this dict has no 'labels' key; its keys: "
                f"{', '.join(map(str, batch))})"
            )
        return model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"]
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, Tensor) for t in batch)
    ):
        return model(batch[0]), batch[1]
    raise HspecError(
        f"data: a batch is a {type(batch).__name__}, not an (inputs, targets) pair of "
        f"tensors; {SUPPORTED_DATA}"
    )


def _logits_of(output):
    """``output.logits`` or ``output["logits"]`` where the model returns such an object
    (HuggingFace's ModelOutput), else ``output``."""
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return getattr(output, "logits", output)


def composed_layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` from its formula, (x − mean) / √(var + eps) · w + b
    over the last ``len(normalized_shape)`` dimensions (population variance)."""
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    centred = input - input.mean(dims, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


class ComposedLayerNorm(TorchFunctionMode):
    """While active, ``torch.nn.functional.layer_norm`` (so ``nn.LayerNorm``) runs as
    :func:`composed_layer_norm`, whose derivatives are those of elementary operations.
    PyTorch's own layer_norm has a forward-mode rule whose derivative is wrong (the
    second-order terms of the mean and variance are dropped: pytorch/pytorch#196700, and
    #198017 for the class of bugs), and ``hvp="reverse-over-forward"`` differentiates that
    rule: measured in torch 2.14, H v of a LayerNorm 99% off. The other modes differentiate
    layer_norm's backward, which is right."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is nn.functional.layer_norm:
            return composed_layer_norm(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class LayerNormSeen(TorchFunctionMode):
    """While active, records in ``.seen`` whether ``torch.nn.functional.layer_norm`` ran:
    the first pass over the data tells whether a product needs :class:`ComposedLayerNorm`,
    whose Python dispatch of every operation costs ~10% of a product (measured on the
    demo's MLP), for models without a LayerNorm for nothing."""

    seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func is nn.functional.layer_norm
        return func(*args, **(kwargs or {}))


class BlockReach(TorchFunctionMode):
    """While active, records in ``.met`` the names of the ``held`` parameters that an
    operation takes together with a value depending on the ``block`` (a block parameter,
    or the output of an operation on one): the parameters downstream of the block.

    In forward mode these meet dual tensors. An operation on a dual tensor and a plain one
    (a held parameter) runs, in torch 2.14, through the Python reference of
    ``torch._refs`` (measured: ``x + c`` and ``layer_norm`` 2.5–3× the time on two duals),
    which made blocks near the input of a small transformer cost more per product than
    the whole model. Dual with zero tangents (:meth:`CurvatureOperator._held_duals`) the
    products of those parameters stay exact (their tangents are 0) and run in C++;
    parameters upstream of the block stay plain, since only plain values meet them.
    Values are tracked by ``id`` while they are alive (a weak reference drops the id)."""

    def __init__(self, block: Iterable[Tensor], held: Mapping[str, Tensor]) -> None:
        super().__init__()
        self._held = {id(t): name for name, t in held.items()}
        self.met: set[str] = set()
        self._reached = {id(t) for t in block}  # alive as long as the operator

    def _reach(self, t: Tensor) -> None:
        if id(t) not in self._reached:
            self._reached.add(id(t))
            weakref.finalize(t, self._reached.discard, id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if any(id(t) in self._reached for t in inputs):
            self.met.update(self._held[id(t)] for t in inputs if id(t) in self._held)
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    self._reach(t)
        return out


class _Forward(nn.Module):
    """``forward(model, batch)`` as one module holding the model, so that
    ``functional_call`` swaps the model's parameters for the user's forward as well."""

    def __init__(self, model: nn.Module, forward: Callable) -> None:
        super().__init__()
        self.model = model
        self.function = forward

    def forward(self, batch):
        return self.function(self.model, batch)


def _fingerprint(obj) -> list[tuple]:
    """(shape, Σ, Σ²) in float64 of every floating tensor in a nest of tuples, lists, dicts."""
    if isinstance(obj, Tensor):
        if not obj.is_floating_point():
            return []
        t = obj.detach().double()
        return [(tuple(t.shape), float(t.sum()), float(t.square().sum()))]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [f for item in obj for f in _fingerprint(item)]
    return []


def _same_prints(a: list[tuple], b: list[tuple], tol: float) -> bool:
    def close(x, y) -> bool:
        (shape, s, q), (shape2, s2, q2) = x, y
        scale = max(q, q2)
        return (
            shape == shape2
            and abs(q - q2) <= tol * scale
            and (abs(s - s2) <= tol * (math.prod(shape) * scale) ** 0.5)
        )

    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


def _differs(a: Tensor, b: Tensor, tol: float) -> bool:
    return bool((a - b).norm() > tol * a.norm())


class CurvatureOperator(SymmetricOperator):
    """A symmetric p×p curvature matrix of a model on a data split, applied matrix-free.

    Subclasses implement :meth:`_batch_function`, the *sum* over one batch of the
    per-example matrices applied to a tangent (a dict shaped like the parameters).
    The first pass over the data checks every batch by one forward pass (no gradient):
    the output against the loss (shapes, class indices in [0, C), a callable's one value
    per example) and the number of examples it counts; on the first batch a second
    forward must give the same output (else a stochastic module is named). Later passes
    reuse the counts (the data are the same at every pass, as a deterministic operator needs).

    Attributes:
        dim: size p of the parameter block (every trainable parameter by default).
        param_names: the block's parameter names, in the order of the vectors.
        loss: the :class:`~hspec.curvature.loss.Loss`.
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
        loss: Loss | None = None,
        forward: Callable | None = None,
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
        if forward is not None and not callable(forward):
            raise HspecError(f"forward: must be a callable (model, batch), got {forward!r}")
        self.hvp = hvp
        self.tf32 = tf32
        self._compiled = torch.compile(self._batch_block, dynamic=False) if compile else None
        self.distributed = distributed
        self.block_size = block_size
        self.model = model
        self.loss = CrossEntropy() if loss is None else loss
        self._module = _Forward(model, default_forward if forward is None else forward)
        self._culprit = "model" if forward is None else "forward"
        self.dtype = check_dtype(dtype)  # _cast needs it before the base's __init__
        self.device = device
        self._batches = batches
        self._classes: int | None = None
        self._data_checked = False  # set by the first complete pass over the data
        #: whether the forward calls layer_norm (None until the first complete pass: then
        #: products compose it, as if it did)
        self._layer_norm: bool | None = None
        self._count = 0  # examples counted by the loss over the split (first pass)
        self._notes: list = []  # per batch of the first pass: what _note returned
        #: the held parameters downstream of the block, and their zero tangents (set by the
        #: first batch: :class:`BlockReach`)
        self._held: tuple[Params, Params] = ({}, {})
        #: the block's parameter names, in the order of the operator's vectors
        self.param_names: list[str] = select_parameters(model, params)
        chosen = set(self.param_names)
        named = dict(model.named_parameters())
        self.params: Params = {n: self._cast(named[n]) for n in self.param_names}
        held = {n: p for n, p in named.items() if n not in chosen}  # frozen or outside the block
        self.constants: Params = {
            _MODEL + n: self._cast(t) for n, t in {**held, **dict(model.named_buffers())}.items()
        }
        self._held_names: list[str] = list(held)
        self._shapes = [p.shape for p in self.params.values()]
        self._numels = [p.numel() for p in self.params.values()]
        super().__init__(sum(self._numels), dtype=dtype, device=device)

    def _cast(self, t: Tensor) -> Tensor:
        t = t.detach().to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    def _to_device(self, batch):
        """The batch with its tensors (in tuples, lists and dicts) on the device, floating
        ones cast to the dtype; other objects as they are (a ``forward`` handles them)."""
        if isinstance(batch, Tensor):
            return self._cast(batch)
        if isinstance(batch, Mapping):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, list):
            return [self._to_device(v) for v in batch]
        if isinstance(batch, tuple):
            items = [self._to_device(v) for v in batch]
            return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
        return batch

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode, the float32 matmul policy and the math kernel of
        ``scaled_dot_product_attention`` (flash and memory-efficient attention have no
        double backward or forward-mode rule), for the duration; under
        ``hvp="reverse-over-forward"`` also :class:`ComposedLayerNorm`."""
        composed = self.hvp == "reverse-over-forward" and self._layer_norm is not False
        layer_norm = ComposedLayerNorm() if composed else None
        with (
            eval_mode(self.model),
            float32_matmul(self.device, self.tf32),
            sdpa_kernel(SDPBackend.MATH),
            layer_norm or contextlib.nullcontext(),
        ):
            yield

    # -- vectors <-> parameter dicts -------------------------------------------------
    def _unflatten(self, v: Tensor) -> Params:
        chunks = torch.split(v, self._numels)
        return {n: c.view(s) for n, c, s in zip(self.params, chunks, self._shapes)}

    @staticmethod
    def _flatten(tangent: Params) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tangent.values()])

    def _held_parameters(self) -> Params:
        """The held parameters (frozen, or outside the block), as the forward sees them."""
        return {n: self.constants[_MODEL + n] for n in self._held_names}

    def _held_duals(self, names: set[str]) -> tuple[Params, Params]:
        """(values, zero tangents) of the held parameters ``names``, for the forward-mode
        passes (:class:`BlockReach`)."""
        values = {n: t for n, t in self._held_parameters().items() if n in names}
        return values, {n: torch.zeros_like(t) for n, t in values.items()}

    def outputs_jvp(self, params: Params, batch, tangent: Params) -> tuple[Tensor, Tensor, object]:
        """(f, J_B v, target) of the batch at θ_B = ``params`` by one ``jvp`` (J_B the
        Jacobian in the block's parameters), the held parameters downstream of the block
        dual with zero tangents (:class:`BlockReach`)."""
        values, zeros = self._held
        return jvp(
            lambda p, h: self.outputs(p, batch, h), (params, values), (tangent, zeros),
            has_aux=True,
        )  # fmt: skip

    # -- the model as a function of the block's parameters ---------------------------
    def outputs(self, params: Params, batch, held: Params | None = None) -> tuple[Tensor, object]:
        """(f(batch; θ), target) with θ_B = ``params`` and every other parameter and buffer
        fixed (``held`` replaces some of those fixed values: the duals of
        :meth:`_held_duals`): the ``forward`` of the operator (default
        :func:`default_forward`), its output replaced by ``.logits`` where it has them."""
        swapped = {_MODEL + n: p for n, p in {**(held or {}), **params}.items()}
        result = functional_call(self._module, {**self.constants, **swapped}, (batch,))
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise HspecError(
                f"forward: returned a {type(result).__name__}; it must return (output, target)"
            )
        output, target = _logits_of(result[0]), result[1]
        if not isinstance(output, Tensor):
            raise HspecError(
                f"{self._culprit}: returned a {type(output).__name__}; hspec needs a model "
                "returning one (N, C) tensor of logits (or the one output tensor its loss "
                "takes, or an object with .logits)"
            )
        return output, target

    def _batch_function(self, batch) -> Callable[[Params], Params]:
        """tangent ↦ Σ over the batch of the per-example matrices applied to it;
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

    def _batch_block(self, batch, V: Tensor) -> Tensor:
        """Σ over the batch of the per-example matrices times the columns of V."""
        return self._block_product(self._batch_function(batch), V)

    def _note(self, output: Tensor, target) -> object:
        """What a subclass keeps of each batch of the first pass (in ``_notes``)."""
        return None

    def _iter_batches(self) -> Iterator:
        """The batches on the device; the first complete pass checks each one (the class
        docstring) and counts its examples; later passes skip the checks and their syncs."""
        if self._data_checked:
            for batch in self._batches():
                yield self._to_device(batch)
            return
        count, notes, layer_norm = 0, [], LayerNormSeen()
        for i, batch in enumerate(self._batches()):
            batch = self._to_device(batch)
            reach = BlockReach(self.params.values(), self._held_parameters()) if i == 0 else None
            with torch.no_grad():
                with layer_norm, reach or contextlib.nullcontext():
                    output, target = self.outputs(self.params, batch)
                if i == 0:
                    self._held = self._held_duals(reach.met)
                    self._check_deterministic(batch, output)
            self.loss.check(output, target)
            self._classes = output.shape[-1]
            count += self.loss.count(output, target)
            notes.append(self._note(output, target))
            yield batch
        self._count, self._notes = count, notes
        self._layer_norm = layer_norm.seen
        self._data_checked = True

    def _check_deterministic(self, batch, output: Tensor) -> None:
        """A second forward of the batch must give ``output`` again (within 10 √eps, as the
        symmetry probe); else the first module whose output changes while its input does
        not is named."""
        tol = 10 * torch.finfo(self.dtype).eps ** 0.5
        if not _differs(output, self.outputs(self.params, batch)[0], tol):
            return
        raise HspecError(
            f"model: {self._stochastic_part(batch, tol)} gives different outputs for the same "
            "batch in eval mode (dropout called with training=True, or another random "
            "layer); hspec needs a deterministic model"
        )

    def _stochastic_part(self, batch, tol: float) -> str:
        """Which module is random: two forwards with a hook on every module, compared call
        by call by fingerprints of their inputs and outputs."""
        names = {module: name for name, module in self._module.named_modules()}

        def calls() -> list[tuple]:
            seen = []

            def hook(module, args, kwargs, output):
                seen.append((module, _fingerprint((args, kwargs)), _fingerprint(output)))

            handles = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
            try:
                self.outputs(self.params, batch)
            finally:
                for handle in handles:
                    handle.remove()
            return seen

        for (module, inputs, out), (_, inputs2, out2) in zip(calls(), calls()):
            if _same_prints(inputs, inputs2, tol) and not _same_prints(out, out2, tol):
                name = names[module]
                if name == "":
                    return "the forward"
                if name == "model":
                    return f"the model ({type(module).__name__}, in its own forward)"
                return f"the module {name[len(_MODEL) :]!r} ({type(module).__name__})"
        return "the model"

    def _matmat(self, V: Tensor) -> Tensor:
        """A V for V of shape (dim, k): one pass over the data; per batch, the columns go
        through in vectorized blocks of ``block_size`` (memory grows with the block). The
        per-batch work is shared by the blocks, except when compiled (then per block)."""
        blocks = torch.split(torch.arange(V.shape[1], device=V.device), self.block_size)
        out = torch.zeros_like(V)
        with self.evaluating():
            for batch in self._iter_batches():
                if self._compiled is not None:
                    for columns in blocks:
                        out[:, columns] += self._compiled(batch, V[:, columns])
                    continue
                product = self._batch_function(batch)
                for columns in blocks:
                    out[:, columns] += self._block_product(product, V[:, columns])
        count = self._count
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

    def _batch_function(self, batch) -> Callable[[Params], Params]:
        def total(params: Params, held: Params) -> Tensor:
            return self.loss.total(*self.outputs(params, batch, held))

        return second_order_product(total, self.params, self.hvp, self._held)


class GradientCovariance(CurvatureOperator):
    """G v = Ave_i J_iᵀ (∇²_f ℓ_i) J_i v: the Gauss–Newton term of eq. 4, the paper's
    "covariance of gradients" (∇²_f ℓ of cross-entropy is diag p − p pᵀ; of "mse" 2 I; of
    a callable loss, forward-over-reverse on the output space).
    Per vector, one forward pass carries the outputs f and J v together (a jvp, recorded
    for the vjp, with J v as an auxiliary output) and one backward through f alone pulls
    u = (∇²_f ℓ) J v back to Jᵀ u: 5 matrix products per linear layer against a
    gradient pass's 3, where a separate vjp and jvp would take 6."""

    def _batch_function(self, batch) -> Callable[[Params], Params]:
        def product(tangent: Params) -> Params:
            def outputs_and_jv(params: Params) -> tuple[Tensor, tuple]:
                out, jv, target = self.outputs_jvp(params, batch, tangent)
                return out, (jv, target)

            out, pullback, (jv, target) = vjp(outputs_and_jv, self.params, has_aux=True)
            return pullback(self.loss.output_hessian_product(out, target, jv))[0]

        return product


class PredictionHessian(CurvatureOperator):
    """R v = Ave_i Σ_c g_ic ∇²f_c(x_i; θ) v with g_i = ∂ℓ_i/∂f held fixed (p_i − e_{y_i}
    for cross-entropy): the paper's "averaged Hessian of predictions" (first term of eq. 4)."""

    def _batch_function(self, batch) -> Callable[[Params], Params]:
        with torch.no_grad():
            g = self.loss.output_gradient(*self.outputs(self.params, batch))

        def weighted_outputs(params: Params, held: Params) -> Tensor:
            return (self.outputs(params, batch, held)[0] * g).sum()

        return second_order_product(weighted_outputs, self.params, self.hvp, self._held)


def _leading(out):
    """``out`` (a tensor, or a dict or tuple of them) with a leading axis of one column, as
    ``vmap`` over one column would give it."""
    if isinstance(out, Tensor):
        return out[None]
    if isinstance(out, tuple):
        return tuple(_leading(t) for t in out)
    return {n: t[None] for n, t in out.items()}


class ClassStructure(CurvatureOperator):
    """One part of G = G0 + G1 + G2 + G_within, the class/cross-class structure of
    :mod:`hspec.curvature.class_structure` (Papyan 2019, 2020), ``part`` one of
    :data:`~hspec.curvature.class_structure.CLASS_COMPONENTS`.

    A product takes two passes over the data, O(p + one batch) memory whatever C is
    (``class_within`` also keeps the N·C numbers t_i of each column, far below p at the
    paper's scale): first a forward with a jvp per batch gives t_i = A_i J_i v, summed per
    class into the C×C matrix S (and the class counts n_c), so batches may split classes;
    then M = S/n_c and a second pass pulls the per-example cotangents A_iᵀ z_i back by one
    forward and one vjp per batch (``class_within``: z_i = t_i − M[y_i] from the kept t_i;
    where a batch differs from the first pass's, as from a shuffling DataLoader, its t_i
    by a jvp again). A product costs about a G v and one more forward (a G v is one
    forward with a jvp and one vjp). Under ``distributed`` S, the counts and
    the result are all-reduced. ``compile`` and ``hvp`` do not apply. Cross-entropy on (N, C)
    logits only (the class means are of its factors); the first pass keeps the targets.
    """

    def _note(self, output: Tensor, target: Tensor) -> Tensor:
        """The class counts of the batch (they need no pass after the first)."""
        if target.ndim != 1:
            raise HspecError(
                f"component: {self.part!r} needs (N, C) logits and targets (N,), "
                f"not targets of shape {tuple(target.shape)} (sequences)"
            )
        return torch.bincount(target, minlength=output.shape[-1])

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable], *, part: str, **kw):
        if kw.get("compile"):
            raise HspecError(f"compile: not supported for the component {part!r}")
        super().__init__(model, batches, **kw)
        self.part = part

    def _pair(self, batch) -> Callable[[Params], tuple[Tensor, Tensor]]:
        """θ ↦ (logits, targets) of the batch, for ``has_aux`` transforms."""
        return lambda params: self.outputs(params, batch)

    def _columns(self, fn: Callable, V: Tensor, *args: Tensor):
        """fn(tangent, *column args) for each column of V (args: one row per column),
        stacked on a leading axis of columns; one vectorized (vmap) pass."""
        rows = torch.split(V, self._numels)
        tangents = {n: r.T.reshape(-1, *s) for n, r, s in zip(self.params, rows, self._shapes)}
        if V.shape[1] == 1:
            return _leading(fn({n: t[0] for n, t in tangents.items()}, *(a[0] for a in args)))
        return vmap(fn)(tangents, *args)

    def _same_batch(self, first: Tensor, second: Tensor) -> bool:
        """Whether the second pass sees the first pass's batch here (the same logits):
        ``class_within`` then reuses its t_i; a DataLoader with shuffle=True gives other
        batches, whose t_i the second pass computes again."""
        tol = 10 * torch.finfo(self.dtype).eps ** 0.5
        return first.shape == second.shape and not _differs(first, second.detach(), tol)

    def _flat_columns(self, products: Params) -> Tensor:
        k = next(iter(products.values())).shape[0]
        return torch.cat([p.reshape(k, -1) for p in products.values()], dim=1).T

    def _sums(self, V: Tensor, blocks) -> tuple[Tensor, Tensor, list]:
        """First pass: S (k, C, C) of the columns of V, the class counts (C,) and, for
        ``class_within``, each batch's t_i = A_i J_i v (per block of columns: (k, n_b, C)),
        which its second pass needs again (N·C numbers per column, far below p)."""
        sums, kept = None, []
        within = self.part == "class_within"
        for batch in self._iter_batches():
            classes = self._classes
            if sums is None:
                sums = V.new_zeros(V.shape[1], classes, classes)

            def batch_sums(tangent: Params, batch=batch, classes=classes):
                out, jv, y = self.outputs_jvp(self.params, batch, tangent)
                t = factor_product(out, jv)
                return coefficients(t, y, classes), t, out

            kept.append([])
            for columns in blocks:
                coefficient, t, logits = self._columns(batch_sums, V[:, columns])
                sums[columns] += coefficient
                if within:
                    kept[-1].append((t, logits[0]))
        if sums is None:  # C is unknown without a batch (also on a rank with an empty shard)
            where = "this rank's shard of the split" if self.distributed else "the split"
            raise HspecError(f"data: {where} has no examples")
        counts = sum(self._notes)
        if self.distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return sums, counts, kept

    def _pullbacks(self, V: Tensor, means: Tensor, blocks, kept: list) -> Tensor:
        """Second pass: Σ_i J_iᵀ A_iᵀ z_i for each column (z_i from ``means``, (k, C, C),
        and for ``class_within`` from the first pass's t_i: z_i = t_i − M[y_i]), one forward
        and one vjp per batch."""
        out = torch.zeros_like(V)
        within = self.part == "class_within"
        weights = means if within else class_coefficients(self.part, means)
        for b, batch in enumerate(self._iter_batches()):
            f, pullback, y = vjp(self._pair(batch), self.params, has_aux=True)
            for j, columns in enumerate(blocks):
                if within and self._same_batch(kept[b][j][1], f):
                    z = kept[b][j][0] - weights[columns][:, y]  # (k, n_b, C)

                    def product(z: Tensor, f=f, pullback=pullback) -> Params:
                        return pullback(factor_transpose_product(f, z))[0]

                    products = vmap(product)(z) if len(columns) > 1 else _leading(product(z[0]))
                elif within:  # another batch than the first pass's here: t_i again, by a jvp

                    def product(tangent: Params, m: Tensor, batch=batch) -> Params:
                        def logits_and_jv(params: Params) -> tuple[Tensor, tuple]:
                            out, jv, y = self.outputs_jvp(params, batch, tangent)
                            return out, (jv, y)

                        f, pullback, (jv, y) = vjp(logits_and_jv, self.params, has_aux=True)
                        z = factor_product(f, jv) - m[y]
                        return pullback(factor_transpose_product(f, z))[0]

                    products = self._columns(product, V[:, columns], weights[columns])
                else:

                    def product(tangent: Params, m: Tensor, f=f, y=y, pullback=pullback) -> Params:
                        return pullback(factor_transpose_product(f, m[y]))[0]

                    products = self._columns(product, V[:, columns], weights[columns])
                out[:, columns] += self._flat_columns(products)
        if self.distributed:
            dist.all_reduce(out)
        return out

    def _matmat(self, V: Tensor) -> Tensor:
        """The part times V (dim, k): two passes over the data, the columns in vectorized
        blocks of ``block_size`` (memory grows with the block)."""
        blocks = torch.split(torch.arange(V.shape[1], device=V.device), self.block_size)
        with self.evaluating():
            sums, counts, kept = self._sums(V, blocks)
            total = int(counts.sum())
            if total == 0:
                raise HspecError("data: the split has no examples")
            return self._pullbacks(V, class_means(sums, counts), blocks, kept) / total


_OPERATORS = {
    "hessian": Hessian,
    "gradient_covariance": GradientCovariance,
    "prediction_hessian": PredictionHessian,
    **{part: functools.partial(ClassStructure, part=part) for part in CLASS_COMPONENTS},
}


def _is_tensor_pair(data) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    )


def _is_tensor_dict(data) -> bool:
    return (
        isinstance(data, Mapping)
        and bool(data)
        and all(isinstance(t, Tensor) and t.ndim >= 1 for t in data.values())
    )


def _split_dict(data: Mapping, size: int) -> list[dict]:
    """A dict of tensors with one leading size N cut into batches of ``size`` rows."""
    sizes = {k: t.shape[0] for k, t in data.items()}
    if len(set(sizes.values())) != 1:
        raise HspecError(
            "data: the tensors of a dict must have one leading size (examples), got "
            + ", ".join(f"{k}: {n}" for k, n in sizes.items())
        )
    n = next(iter(sizes.values()))
    return [{k: t[i : i + size] for k, t in data.items()} for i in range(0, n, size)]


def _batch_source(
    data,
    batch_size: int | None,
    resident: tuple[torch.device, torch.dtype] | None,
    loss: Loss,
    forward: Callable | None,
) -> Callable[[], Iterable]:
    """A callable returning a fresh iterable of batches; with ``resident`` = (device, dtype)
    a pair or dict of tensors is moved and cast there once, not per product."""
    if resident is not None and not (_is_tensor_pair(data) or _is_tensor_dict(data)):
        raise HspecError(
            "resident: needs data as an (inputs, targets) pair of tensors or a dict of "
            f"tensors, got {type(data).__name__}"
        )
    if isinstance(data, DataLoader) or (
        isinstance(data, Iterable)
        and not isinstance(data, (Dataset, Mapping, Tensor, str))
        and not _is_tensor_pair(data)
    ):
        return _given_batches(data, batch_size, forward)
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or size < 1:
        raise HspecError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=size, shuffle=False)
        return lambda: loader

    def move(t: Tensor) -> Tensor:
        if resident is None:
            return t
        device, dtype = resident
        return t.to(device, dtype if t.is_floating_point() else None)

    if _is_tensor_pair(data):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise HspecError(f"data: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
        loss.check_targets(targets)
        inputs, targets = move(inputs), move(targets)
        return lambda: zip(inputs.split(size), targets.split(size))
    if _is_tensor_dict(data):
        batches = _split_dict({k: move(t) for k, t in data.items()}, size)
        return lambda: batches
    raise HspecError(f"data: got a {type(data).__name__}; {SUPPORTED_DATA}")


def _given_batches(data, batch_size: int | None, forward: Callable | None):
    """A DataLoader or a re-iterable collection of batches, as given."""
    kind = "a DataLoader" if isinstance(data, DataLoader) else "batches as given"
    if batch_size is not None:
        raise HspecError(f"batch_size: cannot be given with {kind} (they set their own size)")
    if iter(data) is data:
        raise HspecError(
            f"data: a {type(data).__name__} can be read only once; the operator reads the "
            "data at every product: give a list of batches or a DataLoader"
        )
    if forward is None and isinstance(data, (list, tuple)):
        for batch in data:
            if not (_is_tensor_pair(batch) or isinstance(batch, Mapping)):
                raise HspecError(
                    f"data: a batch is a {type(batch).__name__}, not an (inputs, targets) "
                    f"pair of tensors or a dict; {SUPPORTED_DATA}"
                )
    return lambda: data


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
    loss="cross_entropy",
    params=None,
    forward: Callable | None = None,
) -> CurvatureOperator:
    """The averaged curvature matrix of ``model`` on ``data`` as a linear operator.

    H = G + R holds for every loss: with ℓ_i = ℓ(f(x_i; θ), t_i), ∇²ℓ_i = J_iᵀ (∇²_f ℓ_i) J_i
    + Σ_k (∂ℓ_i/∂f_k) ∇²f_k; G is positive semi-definite when ℓ is convex in the outputs
    (cross-entropy, mse), not in general for a callable loss.

    Args:
        model: any ``nn.Module``; by default a classifier returning one tensor of logits of
            shape (batch, C), C ≥ 2 (or an object with ``.logits``, or a dict with
            ``"logits"``, such as a HuggingFace model's output). It is evaluated in eval
            mode (its training flag is restored) and must then be deterministic: a first
            forward pass that differs from a second one on the same batch raises one error
            naming the random module. ``scaled_dot_product_attention`` runs its math kernel
            inside products (flash and memory-efficient attention have no double backward).
        data: an ``(inputs, targets)`` pair of tensors, a dict of tensors with a leading
            size N (cut into batches of ``batch_size``), a torch ``Dataset`` or a
            ``DataLoader`` yielding such batches, or a list (any re-iterable) of batches
            (each used as given, so no ``batch_size``). A dict batch is HuggingFace style:
            every key but ``"labels"`` goes to the model as a keyword argument, the target
            is ``batch["labels"]``. Each batch is checked when first used: another kind of
            batch, a target outside [0, C) or an output not fitting the loss raise one error.
        loss: ``"cross_entropy"`` (default): logits (N, C) with int64 class indices (N,), or
            sequence logits (B, T, V) with targets (B, T) in which −100
            (:data:`~hspec.curvature.loss.IGNORE_INDEX`) marks tokens not counted; the
            average runs over the counted tokens, each token one example. ``"mse"``:
            ℓ_i = ((out_i − target_i)**2).sum() over every non-batch entry of example i
            (``.sum(-1)`` for (N, D) outputs), target of the output's shape, averaged over N.
            Or a callable ``loss(output, target)`` returning one loss per example, shape
            (N,) with N = ``output.shape[0]`` (differentiated by torch.func: use torch
            operations). The class components need cross-entropy on (N, C) logits.
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
        forward: a callable ``(model, batch) -> (output, target)`` for any batch structure
            (default :func:`default_forward`). It is called with the model whose
            parameters ``torch.func.functional_call`` has swapped for the differentiated
            ones, so it must call ``model`` (the argument or the same object), not a copy;
            tensors in tuples, lists and dicts of a batch arrive on the device, floating
            ones in ``dtype``; other objects as they are. The examples of a batch are the
            loss's (``output.shape[0]``, or the counted tokens).

    Returns:
        A :class:`CurvatureOperator` with ``.dim``, ``.matvec(v)``, ``.matmat(V)`` and
        ``.param_names``.
    """
    if component not in _OPERATORS:
        raise HspecError(f"component: unknown {component!r}; valid: {', '.join(COMPONENTS)}")
    loss_terms = make_loss(loss)
    if component in CLASS_COMPONENTS and not isinstance(loss_terms, CrossEntropy):
        raise HspecError(
            f"loss: {loss_terms.name!r} is not supported by the component {component!r}: "
            "the class structure is that of cross-entropy on (N, C) logits"
        )
    dtype = check_dtype(torch.float32 if dtype is None else dtype)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report
    source = _batch_source(
        data, batch_size, (device, dtype) if resident else None, loss_terms, forward
    )
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
        loss=loss_terms,
        forward=forward,
    )
