"""The operators on a CUDA device against dense float64 references (skipped without one).

Run where a GPU is: ``python -m pytest tests/test_gpu.py`` (benchmarks/gpu.sh does).
"""

import pytest
import torch
from torch import nn

from hspec import curvature_operator
from hspec.curvature.exact import dense_matrices
from hspec.curvature.operators import COMPONENTS, HVP_MODES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 64),
        nn.Tanh(),
        nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = small_cnn().double()
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(48, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (48,))
    dense = dense_matrices(curvature_operator(model, (x, y), dtype=torch.float64))
    return model, x, y, dense


def rel(a, b):
    return float((a.cpu() - b).norm() / b.norm())


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("hvp", HVP_MODES)
def test_cuda_products_equal_dense(problem, component, hvp):
    model, x, y, dense = problem
    op = curvature_operator(
        model,
        (x, y),
        component,
        batch_size=20,
        dtype=torch.float64,
        device="cuda",
        hvp=hvp,
        resident=True,
        block_size=2,
    )
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    assert rel(op.matvec(V[:, 0].cuda()), dense[component] @ V[:, 0]) <= 1e-10
    assert rel(op.matmat(V.cuda()), dense[component] @ V) <= 1e-10


def test_float32_is_strict_and_tf32_is_near(problem):
    """float32 products run without TF32 (relative error ~1e-7); TF32 ones are within the
    ~1e-3 of its 10-bit mantissa. The measured errors are printed."""
    model, x, y, dense = problem
    v = torch.randn(dense["hessian"].shape[0], dtype=torch.float64)
    errors = {}
    for tf32 in (False, True):
        op = curvature_operator(model.float(), (x.float(), y), device="cuda", tf32=tf32)
        errors[tf32] = rel(op.matvec(v.float().cuda()).double(), dense["hessian"] @ v)
    model.double()
    print(f"float32 {errors[False]:.1e}, tf32 {errors[True]:.1e} (relative to float64)")
    assert errors[False] <= 1e-5
    assert errors[True] <= 1e-2


def test_compiled_products_equal_eager(problem):
    model, x, y, dense = problem
    op = curvature_operator(
        model, (x, y), batch_size=24, dtype=torch.float64, device="cuda", compile=True
    )
    v = torch.randn(op.dim, dtype=torch.float64)
    assert rel(op.matvec(v.cuda()), dense["hessian"] @ v) <= 1e-10
