"""The class/cross-class parts of G (Papyan 2019, 2020) against dense matrices built from
explicitly formed per-example δ_{i,c'} (per-example Jacobians by jacrev), in float64."""

from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from hspec import HspecError, curvature_operator
from hspec.curvature.class_structure import BETWEEN_COMPONENTS, CLASS_COMPONENTS
from hspec.curvature.exact import (
    class_deltas,
    class_gram_spectra,
    dense_class_matrices,
    dense_matrices,
    eigenvalues,
)

#: examples per class, in a shuffled order so that every batch size below splits classes
COUNTS = {"balanced": [8, 8, 8], "unbalanced": [10, 7, 4, 2], "empty class": [9, 6, 0, 3]}


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=list(COUNTS))
def problem(request):
    counts = COUNTS[request.param]
    classes = len(counts)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, classes)).double()
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y))]
    x = torch.randn(len(y), 5, dtype=torch.float64) + y[:, None]  # class-dependent inputs
    op = curvature_operator(model, (x, y), "gradient_covariance", dtype=torch.float64)
    dense = dense_matrices(op)
    return model, x, y, dense


@pytest.mark.parametrize("component", CLASS_COMPONENTS)
def test_each_part_equals_its_dense_matrix(problem, component):
    model, x, y, dense = problem
    op = curvature_operator(
        model, (x, y), component, batch_size=5, block_size=2, dtype=torch.float64
    )
    model.train()
    V = torch.randn(op.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert rel(op.matvec(V[:, 0]), dense[component] @ V[:, 0]) <= 1e-10
    assert rel(op.matmat(V), dense[component] @ V) <= 1e-10  # vmap blocks of 2, then 1
    assert model.training, "the model's training flag must be restored"


def test_the_parts_sum_to_g(problem):
    model, x, y, dense = problem
    parts = {name: dense[name] for name in ("class_g0", "class_g1", "class_g2", "class_within")}
    assert rel(sum(parts.values()), dense["gradient_covariance"]) <= 1e-10
    assert rel(dense["class_g1"] + dense["class_g2"], dense["class_g1_g2"]) <= 1e-10
    assert rel(parts["class_g0"] + dense["class_g1_g2"], dense["class_g0_g1_g2"]) <= 1e-10
    # and matrix-free: the operators' products add up to G v
    v = torch.randn(dense["class_g0"].shape[0], dtype=torch.float64)
    products = [
        curvature_operator(model, (x, y), name, batch_size=7, dtype=torch.float64).matvec(v)
        for name in parts
    ]
    g = curvature_operator(model, (x, y), "gradient_covariance", dtype=torch.float64)
    assert rel(sum(products), g.matvec(v)) <= 1e-10


def test_g0_and_g1_have_rank_at_most_c(problem):
    model, _, _, dense = problem
    classes = model[-1].out_features
    for name, rank in (("class_g0", classes), ("class_g1", classes)):
        values = eigenvalues(dense[name])
        assert np.sum(np.abs(values) > 1e-10 * values[-1]) <= rank, name
        assert values[-1] > 0


@pytest.mark.parametrize("batch_size", [1, 5, 100])
def test_gram_route_equals_the_dense_nonzero_spectra(problem, batch_size):
    model, x, y, dense = problem
    op = curvature_operator(model, (x, y), batch_size=batch_size, dtype=torch.float64)
    spectra = class_gram_spectra(op)
    classes = model[-1].out_features
    assert set(spectra) == set(BETWEEN_COMPONENTS)
    assert len(spectra["class_g0"]) == len(spectra["class_g1"]) == classes  # C×C Gram
    for name, gram in spectra.items():
        exact = eigenvalues(dense[name])
        top = exact[-1]
        k = len(gram)
        assert np.abs(gram - exact[-k:]).max() <= 1e-10 * top, name
        assert np.all(np.abs(exact[:-k]) <= 1e-10 * top), name  # the rest of the spectrum is 0


@pytest.mark.parametrize("component", CLASS_COMPONENTS)
def test_batches_that_split_classes_and_a_dataloader_give_the_same_product(problem, component):
    model, x, y, dense = problem
    v = torch.randn(dense[component].shape[0], dtype=torch.float64)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True
    )
    results = [
        curvature_operator(model, data, component, dtype=torch.float64, **kw).matvec(v)
        for data, kw in [
            ((x, y), {"batch_size": len(y)}),
            ((x, y), {"batch_size": 1}),
            ((x, y), {"batch_size": 7}),
            (torch.utils.data.TensorDataset(x, y), {"batch_size": 3}),
            (loader, {}),
        ]
    ]
    for result in results[1:]:
        assert rel(result, results[0]) <= 1e-12


def test_dense_parts_follow_the_definitions_on_a_hand_made_example():
    """Two classes, δ's chosen by hand: δ_{c,c'} means, G0 = Σ w_c δ_cc δ_ccᵀ, G1 from δ_c,
    G2 = 0 at C = 2 (one ν per class, and it is 0), within = scatter about the means."""
    deltas = torch.tensor(
        [[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 4.0]], [[0.0, 1.0], [1.0, 1.0]]],
        dtype=torch.float64,
    )  # (N = 3, C = 2, p = 2)
    targets = torch.tensor([0, 0, 1])
    parts = dense_class_matrices(deltas, targets)
    w0, w1 = 2 / 3, 1 / 3
    d00, d01 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0])
    d10, d11 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    outer = torch.outer
    g0 = w0 * outer(d00, d00) + w1 * outer(d11, d11)
    g1 = w0 * outer(d01, d01) + w1 * outer(d10, d10)
    assert torch.allclose(parts["class_g0"], g0.double())
    assert torch.allclose(parts["class_g1"], g1.double())
    assert torch.allclose(parts["class_g2"], torch.zeros(2, 2, dtype=torch.float64))
    within = (2 * outer(torch.tensor([1.0, 0]), torch.tensor([1.0, 0]))) / 3
    within += 2 * outer(torch.tensor([0, 1.0]), torch.tensor([0, 1.0])) / 3
    assert torch.allclose(parts["class_within"], within.double())


def saturated_mlp(classes=4, n=40):
    """An MLP fitted to its labels with logit margins ~28 (1 − max p ≤ 1e-5), as in
    tests/test_loss.py."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 256), nn.Tanh(), nn.Linear(256, classes))
    x, y = torch.randn(n, 8), torch.randint(0, classes, (n,))
    hidden = model[1](model[0](x)).detach()
    target = 14.0 * (2 * nn.functional.one_hot(y, classes) - 1).float()
    solution = torch.linalg.lstsq(hidden.double(), target.double()).solution.float()
    with torch.no_grad():
        model[2].weight.copy_(solution.T)
        model[2].bias.zero_()
        gap = 1 - torch.softmax(model(x).double(), -1).max(-1).values
    assert float(gap.max()) <= 1e-5
    return model, x, y


def textbook_transpose(logits, z):
    prob = torch.softmax(logits.detach(), dim=-1)
    return prob.sqrt() * z - prob * (prob.sqrt() * z).sum(-1, keepdim=True)


@pytest.mark.parametrize(
    "component, textbook_fails",
    [("class_g0", True), ("class_g1", False), ("class_within", False)],
)
def test_float32_products_of_a_saturated_net_match_float64(component, textbook_fails):
    """float32 products within 3e-5 of float64 at 1 − max p ≤ 1e-5. With the textbook
    A_iᵀ z = √p ⊙ z − p (√pᵀ z), whose component r has z_r (1 − p_r) by cancellation, G0
    (z_i = M[c, c] e_c with c = y_i = r on a fitted net) is ≥ 1e-3 off; G1 (z_i[y_i] = 0)
    and G_within (z_i[y_i] small, the term −p_r Σ √p_c z_c dominates) are not hurt
    (measured 3e-6 and 8e-6)."""
    model, x, y = saturated_mlp()
    v = torch.randn(
        sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2)
    )
    exact = curvature_operator(model, (x, y), component, dtype=torch.float64).matvec(v.double())
    product = curvature_operator(model, (x, y), component).matvec(v)
    assert rel(product.double(), exact) <= 3e-5
    with mock.patch("hspec.curvature.operators.factor_transpose_product", textbook_transpose):
        product = curvature_operator(model, (x, y), component).matvec(v)
    assert (rel(product.double(), exact) >= 1e-3) == textbook_fails


def test_bad_arguments_name_the_culprit(problem):
    model, x, y, _ = problem
    with pytest.raises(HspecError, match="compile: not supported for the component 'class_g1'"):
        curvature_operator(model, (x, y), "class_g1", compile=True)
    op = curvature_operator(model, (x, y), dtype=torch.float64)
    with pytest.raises(HspecError, match="parts: 'class_within' has no Gram route"):
        class_gram_spectra(op, ["class_within"])
    with pytest.raises(HspecError, match="data: the split has no examples"):
        empty = (x[:0], y[:0])
        curvature_operator(model, empty, "class_g0", dtype=torch.float64).matvec(
            torch.zeros(op.dim, dtype=torch.float64)
        )


def test_class_deltas_are_the_gradient_factors(problem):
    """Σ_c' δ_{i,c'} δ_{i,c'}ᵀ averaged over i is G: the δ's factor G (textbook check)."""
    model, x, y, dense = problem
    op = curvature_operator(model, (x, y), batch_size=5, dtype=torch.float64)
    deltas, targets = class_deltas(op)
    assert torch.equal(targets, y)
    flat = deltas.flatten(0, 1)
    assert rel(flat.T @ flat / len(y), dense["gradient_covariance"]) <= 1e-12
