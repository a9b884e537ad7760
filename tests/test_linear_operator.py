"""The operator base: checked, counted products; dtypes and scales the algorithms hold."""

import numpy as np
import pytest
import torch

from hspec import HspecError, spectral_density
from hspec.numerics.lanczos import slow_lanczos
from hspec.numerics.linear_operator import Deflated, LinearOperator, Normalized, SymmetricOperator

DIAGONAL = torch.linspace(-1.0, 3.0, 50)


def diagonal(scale: float) -> LinearOperator:
    d = DIAGONAL * scale
    return LinearOperator(lambda v: d * v, len(d))


def test_derived_operators_share_the_base_checks_and_count_their_products():
    op = diagonal(1.0)
    basis = torch.eye(50)[:, :2]
    for derived in (Normalized(op, 1.0, 2.0), Deflated(op, basis)):
        assert isinstance(derived, SymmetricOperator)
        derived.matmat(torch.randn(50, 3))
        assert derived.hvp_count == 3
        with pytest.raises(HspecError, match=r"v: expected shape \(dim,\) with dim=50"):
            derived.matvec(torch.randn(49))
    assert op.hvp_count == 6
    v = torch.randn(50)
    assert torch.allclose(Normalized(op, 1.0, 2.0) @ v, (DIAGONAL * v - v) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused(dtype):
    with pytest.raises(HspecError, match="dtype: must be torch.float32 or torch.float64"):
        LinearOperator.wrap(lambda v: v, 5, dtype=dtype)


@pytest.mark.parametrize("scale", [1e30, 1e20, 1e-20, 1e-38])
def test_a_float32_scale_beyond_its_inner_products_is_refused(scale):
    with pytest.raises(
        HspecError,
        match=r"scale ‖A v‖/‖v‖ ≈ .*e[+-]\d+ is outside what "
        "float32 inner products hold",
    ):
        spectral_density(diagonal(scale), steps=8, bound_steps=8, points=8)


@pytest.mark.parametrize("scale", [1e12, 1.0, 1e-12])
def test_a_float32_scale_within_range_gives_the_eigenvalues(scale):
    theta, _ = slow_lanczos(diagonal(scale), generator=torch.Generator().manual_seed(0))
    assert np.allclose(theta / scale, DIAGONAL.double().numpy(), atol=1e-4)
    result = spectral_density(diagonal(scale), steps=50, bound_steps=20, points=8)
    assert -1.01 <= result.lambda_min / scale <= -0.99 <= 2.99 <= result.lambda_max / scale


def test_a_zero_operator_is_not_refused():
    result = spectral_density(diagonal(0.0), steps=8, bound_steps=8, points=8)
    assert result.lambda_min == result.lambda_max == 0.0


def test_the_scale_is_checked_on_the_first_nonzero_product():
    op = diagonal(1e30)
    assert not op.matvec(torch.zeros(50)).any()
    with pytest.raises(HspecError, match="scale ‖A v‖/‖v‖ ≈ 3e[+]30 is outside"):
        op.matvec(torch.ones(50))
