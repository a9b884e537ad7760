"""Small symmetric linear operators on flat torch vectors, as the algorithms see them.

:class:`LinearOperator` wraps any callable ``v ↦ A v`` and checks every product (shape,
dtype, device, finiteness) and counts them; :class:`Normalized` is (A − cI)/d of
NORMALIZATION (paper Alg. 4); :class:`Deflated` is P A P with P = I − Q Qᵀ, the operator
left after LOWRANKDEFLATION (paper Alg. 5) removes the span of Q.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hspec.errors import HspecError
from hspec.inner_products import dot, gram, norm


class LinearOperator:
    """A symmetric dim×dim operator given by ``matvec``; counts products in ``hvp_count``.

    ``matmat`` (optional) multiplies a (dim, k) block at once; by default it applies
    ``matvec`` to each column.
    """

    def __init__(self, matvec: Callable[[Tensor], Tensor], dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 matmat: Callable[[Tensor], Tensor] | None = None) -> None:
        if not callable(matvec):
            raise HspecError(f"matvec: expected a callable, got {type(matvec).__name__}")
        if not isinstance(dim, int) or dim < 1:
            raise HspecError(f"dim: must be a positive integer, got {dim!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise HspecError(f"dtype: must be a floating torch.dtype, got {dtype!r}")
        self._matvec = matvec
        self._matmat = matmat
        self.dim = dim
        self.dtype = dtype
        self.device = torch.empty(0, device=device).device
        self.hvp_count = 0
        self.context = ""  # named in errors, e.g. "Lanczos iteration 17"

    @classmethod
    def wrap(cls, operator, dim: int | None = None, *, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> "LinearOperator":
        """From a callable (``dim`` required) or an object with ``matvec`` and ``dim``
        (such as a :class:`hspec.operators.CurvatureOperator`), whose ``dtype``,
        ``device`` and ``matmat`` are used when present."""
        if hasattr(operator, "matvec") and hasattr(operator, "dim"):
            return cls(operator.matvec, operator.dim if dim is None else dim,
                       dtype=dtype or getattr(operator, "dtype", torch.float32),
                       device=device or getattr(operator, "device", "cpu"),
                       matmat=getattr(operator, "matmat", None))
        if dim is None:
            raise HspecError("dim: required when the operator is a plain callable")
        return cls(operator, dim, dtype=dtype or torch.float32, device=device or "cpu")

    def _check(self, out, shape: tuple[int, ...]) -> Tensor:
        where = f" at {self.context}" if self.context else ""
        if not isinstance(out, Tensor):
            raise HspecError(f"matvec: returned {type(out).__name__}, not a Tensor{where}")
        if tuple(out.shape) != shape:
            raise HspecError(f"matvec: returned shape {tuple(out.shape)}, expected {shape}"
                             f"{where}")
        if out.dtype != self.dtype:
            raise HspecError(f"dtype: matvec returned {out.dtype} for {self.dtype} input"
                             f"{where}; pass dtype={out.dtype}")
        if out.device != self.device:
            raise HspecError(f"device: matvec returned a tensor on {out.device} for input "
                             f"on {self.device}{where}; pass device='{out.device}'")
        if not torch.isfinite(out).all():
            raise HspecError(f"matvec: returned NaN or Inf{where or ' (first product)'}")
        return out

    def matvec(self, v: Tensor) -> Tensor:
        self.hvp_count += 1
        return self._check(self._matvec(v), (self.dim,))

    def matmat(self, V: Tensor) -> Tensor:
        self.hvp_count += V.shape[1]
        if self._matmat is None:
            return torch.stack([self._check(self._matvec(c), (self.dim,)) for c in V.T], 1)
        return self._check(self._matmat(V), tuple(V.shape))

    def randn(self, *shape: int, generator: torch.Generator) -> Tensor:
        """Standard Gaussian vectors drawn on the CPU (same numbers on every device)."""
        return torch.randn(self.dim, *shape, generator=generator,
                           dtype=torch.float64).to(self.device, self.dtype)

    def check_symmetric(self, generator: torch.Generator) -> None:
        """Cheap probe (two products): |yᵀAx − xᵀAy| must be within √eps of the scale."""
        x, y = self.randn(generator=generator), self.randn(generator=generator)
        self.context = "the symmetry probe"
        ax, ay = self.matvec(x), self.matvec(y)
        gap = abs(dot(y, ax) - dot(x, ay))
        scale = norm(ax) * norm(y) + norm(ay) * norm(x)
        tol = 10 * torch.finfo(self.dtype).eps ** 0.5
        if gap > tol * scale:
            raise HspecError(f"matvec: the operator is not symmetric (|yᵀAx − xᵀAy| = "
                             f"{gap:.3g}, relative {gap / scale:.3g} > {tol:.1g})")


class _Derived:
    """An operator built on another: shares its size, dtype, device, random vectors,
    product count and the ``context`` named in its errors."""

    def __init__(self, op) -> None:
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

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

    def matvec(self, v: Tensor) -> Tensor:
        return (self.op.matvec(v) - self.c * v) / self.d

    def matmat(self, V: Tensor) -> Tensor:
        return (self.op.matmat(V) - self.c * V) / self.d


class Deflated(_Derived):
    """P A P with P = I − Q Qᵀ for orthonormal columns Q (dim, C): A with the span of Q
    removed, as left by LOWRANKDEFLATION (paper Alg. 5 and Section 2.8)."""

    def __init__(self, op, basis: Tensor) -> None:
        super().__init__(op)
        self.basis = basis

    def project(self, V: Tensor) -> Tensor:
        return V - self.basis @ gram(self.basis, V).to(V.dtype)

    def matvec(self, v: Tensor) -> Tensor:
        return self.project(self.op.matvec(self.project(v)))

    def matmat(self, V: Tensor) -> Tensor:
        return self.project(self.op.matmat(self.project(V)))
