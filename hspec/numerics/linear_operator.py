"""Small symmetric linear operators on flat torch vectors, as the algorithms see them.

:class:`SymmetricOperator` is the one base: its public ``matvec``/``matmat`` (and ``@``)
check the input (shape, dtype, device) and every product (a tensor of the input's shape,
dtype and device, finite), count the products in ``hvp_count``, and leave the product
itself to a subclass's ``_matmat``. :class:`LinearOperator` wraps any callable
``v ↦ A v``; :class:`hspec.curvature.operators.CurvatureOperator` is the curvature of a model;
:class:`Normalized` is (A − cI)/d of NORMALIZATION (paper Alg. 4); :class:`Deflated` is
P A P with P = I − Q Qᵀ, the operator left after LOWRANKDEFLATION (paper Alg. 5) removes
the span of Q.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hspec.errors import HspecError
from hspec.numerics.inner_products import dot, gram, norm

#: dtypes the algorithms run in (Lanczos in float16/bfloat16 gets a badly wrong range)
DTYPES = (torch.float32, torch.float64)


def check_dtype(dtype) -> torch.dtype:
    """``dtype`` if it is float32 or float64, else one clear error."""
    if dtype not in DTYPES:
        raise HspecError(
            f"dtype: must be torch.float32 or torch.float64 (Lanczos needs "
            f"their precision), got {dtype!r}"
        )
    return dtype


def _scale_limit(dtype: torch.dtype) -> float:
    """Largest ‖A v‖/‖v‖ (and inverse of the smallest nonzero one) whose inner products
    neither overflow nor underflow in ``dtype``: 2^(emax/2 − 12), 4.5e15 for float32."""
    return 2.0 ** (math.ceil(math.log2(torch.finfo(dtype).max)) // 2 - 12)


class SymmetricOperator:
    """A symmetric dim×dim operator on flat vectors of one dtype and device.

    Subclasses implement ``_matmat(V)`` (A V for V of shape (dim, k)) and set ``dim``,
    ``dtype`` and ``device`` through ``__init__``. The public methods guarantee that a
    wrong input or a product that is not a finite tensor of the input's shape, dtype
    and device raises one :class:`HspecError` naming ``context`` (set by the algorithms,
    e.g. "Lanczos iteration 17"), and that ``hvp_count`` counts every column multiplied.
    """

    def __init__(self, dim: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise HspecError(f"dim: must be a positive integer, got {dim!r}")
        self.dim = dim
        self.dtype = check_dtype(dtype)
        self.device = torch.empty(0, device=device).device
        self.hvp_count = 0
        self.context = ""

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def _where(self) -> str:
        return f" at {self.context}" if self.context else ""

    def _check_input(self, v, name: str, ndim: int) -> None:
        if not isinstance(v, Tensor):
            raise HspecError(f"{name}: expected a torch.Tensor, got {type(v).__name__}")
        if v.ndim != ndim or v.shape[0] != self.dim:
            want = "(dim,)" if ndim == 1 else "(dim, k)"
            raise HspecError(
                f"{name}: expected shape {want} with dim={self.dim}, got {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise HspecError(f"{name}: dtype {v.dtype} does not match the operator's {self.dtype}")
        if v.device != self.device:
            raise HspecError(
                f"{name}: device {v.device} does not match the operator's {self.device}"
            )

    def _check_output(self, out, shape: tuple[int, ...]) -> Tensor:
        where = self._where()
        if not isinstance(out, Tensor):
            raise HspecError(f"matvec: returned {type(out).__name__}, not a Tensor{where}")
        if tuple(out.shape) != shape:
            raise HspecError(f"matvec: returned shape {tuple(out.shape)}, expected {shape}{where}")
        if out.dtype != self.dtype:
            raise HspecError(
                f"dtype: matvec returned {out.dtype} for {self.dtype} input"
                f"{where}; pass dtype={out.dtype}"
            )
        if out.device != self.device:
            raise HspecError(
                f"device: matvec returned a tensor on {out.device} for input "
                f"on {self.device}{where}; pass device='{out.device}'"
            )
        if not torch.isfinite(out).all():
            raise HspecError(f"matvec: returned NaN or Inf{where}")
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """A V for V of shape (dim, k), counted as k products."""
        self._check_input(V, "V", 2)
        self.hvp_count += V.shape[1]
        return self._check_output(self._matmat(V), tuple(V.shape))

    def matvec(self, v: Tensor) -> Tensor:
        """A v for a flat vector v of shape (dim,), counted as one product."""
        self._check_input(v, "v", 1)
        self.hvp_count += 1
        return self._check_output(self._matmat(v[:, None]), (self.dim, 1))[:, 0]

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v) if isinstance(v, Tensor) and v.ndim == 1 else self.matmat(v)

    def randn(self, *shape: int, generator: torch.Generator) -> Tensor:
        """Standard Gaussian vectors drawn on the CPU (same numbers on every device)."""
        return torch.randn(self.dim, *shape, generator=generator, dtype=torch.float64).to(
            self.device, self.dtype
        )

    def check_symmetric(self, generator: torch.Generator) -> None:
        """Cheap probe (three products: A x twice, A y): A x must be reproducible and
        |yᵀAx − xᵀAy| small, both within 10 √eps of the scale (float32: 3.5e-3, far
        below what dropout left on gives, above GPU reduction-order noise)."""
        x, y = self.randn(generator=generator), self.randn(generator=generator)
        self.context = "the symmetry probe"
        ax, again, ay = self.matvec(x), self.matvec(x), self.matvec(y)
        self.context = ""
        tol = 10 * torch.finfo(self.dtype).eps ** 0.5
        change = norm(again - ax)
        if change > tol * norm(ax):
            raise HspecError(
                f"matvec: the operator is not deterministic: two products with "
                f"the same vector differ by {change / norm(ax):.3g} relative "
                f"(> {tol:.1g}); is dropout or another random layer active?"
            )
        gap = abs(dot(y, ax) - dot(x, ay))
        scale = norm(ax) * norm(y) + norm(ay) * norm(x)
        if gap > tol * scale:
            raise HspecError(
                f"matvec: the operator is not symmetric (|yᵀAx − xᵀAy| = "
                f"{gap:.3g}, relative {gap / scale:.3g} > {tol:.1g})"
            )


class LinearOperator(SymmetricOperator):
    """A symmetric operator given by a callable ``matvec`` (and optionally ``matmat``,
    which multiplies a (dim, k) block at once; by default ``matvec`` is applied to each
    column). Its first nonzero product must show a scale ‖A v‖/‖v‖ (max-abs ratio) within
    [1/L, L], L = 2^(emax/2 − 12) of the dtype (4.5e15 for float32): beyond, the
    algorithms' inner products overflow or underflow, so it is refused."""

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        matmat: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not callable(matvec):
            raise HspecError(f"matvec: expected a callable, got {type(matvec).__name__}")
        super().__init__(dim, dtype=dtype, device=device)
        self._matvec = matvec
        self._block = matmat
        self._scale_known = False  # set by the first nonzero product within range

    @classmethod
    def wrap(
        cls,
        operator,
        dim: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LinearOperator:
        """From a callable (``dim`` required) or an object with ``matvec`` and ``dim``
        (such as a :class:`hspec.curvature.operators.CurvatureOperator`), whose ``dtype``,
        ``device`` and ``matmat`` are used when present. The result counts its own
        products (the wrapped operator's ``hvp_count`` counts them too)."""
        if hasattr(operator, "matvec") and hasattr(operator, "dim"):
            return cls(
                operator.matvec,
                operator.dim if dim is None else dim,
                dtype=dtype or getattr(operator, "dtype", torch.float32),
                device=device or getattr(operator, "device", "cpu"),
                matmat=getattr(operator, "matmat", None),
            )
        if dim is None:
            raise HspecError("dim: required when the operator is a plain callable")
        return cls(operator, dim, dtype=dtype or torch.float32, device=device or "cpu")

    def _matmat(self, V: Tensor) -> Tensor:
        if V.shape[1] == 1:
            out = self._check_output(self._matvec(V[:, 0]), (self.dim,))[:, None]
        elif self._block is None:
            out = torch.stack([self._check_output(self._matvec(c), (self.dim,)) for c in V.T], 1)
        else:
            out = self._block(V)
        if not self._scale_known:
            self._check_scale(self._check_output(out, tuple(V.shape)), V)
        return out

    def _check_scale(self, out: Tensor, V: Tensor) -> None:
        size = float(V.abs().max())
        ratio = float(out.abs().max()) / size if size > 0 else 0.0
        limit = _scale_limit(self.dtype)
        self._scale_known = 1 / limit <= ratio <= limit
        if ratio != 0 and not self._scale_known:
            name = str(self.dtype).removeprefix("torch.")
            raise HspecError(
                f"matvec: the operator's scale ‖A v‖/‖v‖ ≈ {ratio:.3g} is "
                f"outside what {name} inner products hold ({1 / limit:.2g} to "
                f"{limit:.2g}){self._where()}; multiply it by a power of "
                "two (and the eigenvalues back), or use float64"
            )


class _Derived(SymmetricOperator):
    """An operator built on another: shares its size, dtype, device, random vectors and
    the ``context`` named in its errors; ``hvp_count`` counts the products through it."""

    def __init__(self, op) -> None:
        self.op = op
        super().__init__(op.dim, dtype=op.dtype, device=op.device)

    @property
    def context(self) -> str:
        return self.op.context

    @context.setter
    def context(self, value: str) -> None:
        self.op.context = value

    def randn(self, *shape: int, generator: torch.Generator) -> Tensor:
        return self.op.randn(*shape, generator=generator)


class Normalized(_Derived):
    """(A − cI)/d: maps the spectrum of A in [c − d, c + d] into [−1, 1] (paper Alg. 4)."""

    def __init__(self, op, c: float, d: float) -> None:
        super().__init__(op)
        self.c, self.d = c, d

    def _matmat(self, V: Tensor) -> Tensor:
        return (self.op.matmat(V) - self.c * V) / self.d


class Deflated(_Derived):
    """P A P with P = I − Q Qᵀ for orthonormal columns Q (dim, C): A with the span of Q
    removed, as left by LOWRANKDEFLATION (paper Alg. 5 and Section 2.8)."""

    def __init__(self, op, basis: Tensor) -> None:
        super().__init__(op)
        self.basis = basis

    def project(self, V: Tensor) -> Tensor:
        return V - self.basis @ gram(self.basis, V).to(V.dtype)

    def _matmat(self, V: Tensor) -> Tensor:
        return self.project(self.op.matmat(self.project(V)))
