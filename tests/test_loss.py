"""The shifted cross-entropy forms (hspec.curvature.loss) against the textbook ones, and their float32
accuracy when the softmax saturates."""

from unittest import mock

import pytest
import torch
from torch import nn
from torch.func import vmap

from hspec import curvature_operator
from hspec.curvature.loss import cross_entropy, logit_gradient, logit_hessian_product
from hspec.curvature.operators import EQ4_COMPONENTS, HVP_MODES, second_order_product

C = 6


def textbook_loss(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="sum")


def textbook_gradient(logits, targets):
    """p − e_y as torch computes it."""
    return torch.softmax(logits.detach(), dim=-1) - nn.functional.one_hot(targets, C)


def textbook_hessian_product(logits, u):
    """(diag p − p pᵀ) u as p ⊙ u − p (pᵀu), the form of softmax's backward."""
    prob = torch.softmax(logits.detach(), dim=-1)
    return prob * u - prob * (prob * u).sum(-1, keepdim=True)


def textbook(logits, targets, u):
    return (
        textbook_loss(logits, targets),
        textbook_gradient(logits, targets),
        textbook_hessian_product(logits, u),
    )


def saturated_logits(gap: float, dtype=torch.float64):
    """Rows whose largest softmax probability is 1 − ``gap`` within a factor of ~C: the first
    12 rows on their label (fitted training examples), the last 4 on another class
    (confidently wrong)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, C, (16,), generator=generator)
    logits = torch.randn(16, C, dtype=torch.float64, generator=generator)
    top = targets.clone()
    top[12:] = (targets[12:] + 1) % C
    logits[torch.arange(16), top] += -torch.log(torch.tensor(gap, dtype=torch.float64))
    u = torch.randn(16, C, dtype=torch.float64, generator=generator)
    return logits.to(dtype), targets, u.to(dtype)


def worst_row_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b).norm(dim=-1) / b.norm(dim=-1)).max())


def test_equal_to_the_textbook_forms_in_float64():
    logits, targets, u = saturated_logits(0.3)
    loss, gradient, product = textbook(logits, targets, u)
    assert abs(float(cross_entropy(logits, targets) / loss) - 1) <= 1e-14
    assert worst_row_error(logit_gradient(logits, targets), gradient) <= 1e-14
    assert worst_row_error(logit_hessian_product(logits, u), product) <= 1e-14


@pytest.mark.parametrize("gap", [1e-4, 1e-6])
def test_float32_keeps_its_accuracy_where_the_textbook_forms_lose_it(gap):
    """The reference is float64's textbook forms (their cancellation costs ~1e-16/gap ≤ 1e-10);
    in float32 the textbook forms lose ~6e-8/gap of relative accuracy, the shifted ones none."""
    logits, targets, u = saturated_logits(gap)
    _, gradient, product = textbook(logits, targets, u)
    logits32, u32 = logits.float(), u.float()
    assert worst_row_error(logit_gradient(logits32, targets), gradient) <= 1e-6
    assert worst_row_error(logit_hessian_product(logits32, u32), product) <= 1e-6
    _, gradient32, product32 = textbook(logits32, targets, u32)
    assert worst_row_error(gradient32, gradient) >= 1e-2 * 1e-6 / gap
    assert worst_row_error(product32, product) >= 1e-2 * 1e-6 / gap


@pytest.mark.parametrize("hvp", HVP_MODES)
def test_second_derivatives_of_the_loss_keep_float32_accuracy(hvp):
    """∇²ℓ u by each autodiff mode of hspec's operators equals (diag p − p pᵀ) u to float32
    accuracy at 1 − p_r = 1e-6."""
    logits, targets, u = saturated_logits(1e-6)
    _, _, product = textbook(logits, targets, u)
    hessian_product = second_order_product(
        lambda params, held: cross_entropy(params["f"], targets), {"f": logits.float()}, hvp
    )
    assert worst_row_error(hessian_product({"f": u.float()})["f"], product) <= 1e-6


def test_hessian_product_maps_over_a_block_of_vectors():
    logits, _, _ = saturated_logits(1e-3, torch.float32)
    U = torch.randn(3, 16, C, generator=torch.Generator().manual_seed(1))
    looped = torch.stack([logit_hessian_product(logits, u) for u in U])
    assert torch.equal(vmap(lambda u: logit_hessian_product(logits, u))(U), looped)


@pytest.mark.parametrize("component", EQ4_COMPONENTS)
def test_float32_products_of_a_saturated_net_match_float64(component):
    """An MLP that fits its labels with logit margins ~28 (1 − max p ≤ 1e-5 everywhere):
    float32 products of every component within 3e-5 of float64 ones (measured 3e-6 to 7e-6;
    the float32 logits themselves are ~2e-5 off), where the textbook forms are ≥ 1e-3 off
    (measured: H 6e-3 by reverse-over-forward, 0.6 by the other modes; G 0.6; R 0.85)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 512), nn.Tanh(), nn.Linear(512, C))
    x = torch.randn(40, 8)
    y = torch.randint(0, C, (40,))
    # the minimum-norm last layer that interpolates logits ±14
    hidden = model[1](model[0](x)).detach()
    target = 14.0 * (2 * nn.functional.one_hot(y, C) - 1).float()
    solution = torch.linalg.lstsq(hidden.double(), target.double()).solution.float()
    with torch.no_grad():
        model[2].weight.copy_(solution.T)
        model[2].bias.zero_()
        gap = 1 - torch.softmax(model(x).double(), -1).max(-1).values
    assert 1e-13 <= float(gap.min()) and float(gap.max()) <= 1e-5
    v = torch.randn(
        sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2)
    )
    exact = curvature_operator(model, (x, y), component, dtype=torch.float64).matvec(v.double())
    product = curvature_operator(model, (x, y), component).matvec(v)
    assert float((product.double() - exact).norm() / exact.norm()) <= 3e-5
    with mock.patch.multiple(
        "hspec.curvature.loss",
        cross_entropy=textbook_loss,
        logit_gradient=textbook_gradient,
        logit_hessian_product=textbook_hessian_product,
    ):
        product = curvature_operator(model, (x, y), component).matvec(v)
    assert float((product.double() - exact).norm() / exact.norm()) >= 1e-3
