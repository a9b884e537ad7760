"""Any model a researcher brings (issue 12): parameter blocks, losses, structured batches
and transformers, each against dense references from an independent code path (float64)."""

import pytest
import torch
from torch import nn

from hspec import HspecError, curvature_operator
from hspec.curvature.blocks import layer_blocks
from hspec.curvature.exact import dense_matrices
from hspec.curvature.operators import EQ4_COMPONENTS


def rel(a, b):
    return float((a - b).norm() / b.norm())


def vector(dim, seed=1, k=None):
    shape = (dim,) if k is None else (dim, k)
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def offsets(op):
    """{name: slice} of each parameter in the operator's flat vectors."""
    out, start = {}, 0
    for name, p in op.params.items():
        out[name] = slice(start, start + p.numel())
        start += p.numel()
    return out


def diagonal_block(full, op_full, names):
    """Rows and columns of ``names`` (in the full operator's order) of the dense matrix."""
    where = offsets(op_full)
    index = torch.cat([torch.arange(where[n].start, where[n].stop) for n in names])
    return full[index][:, index]


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(torch.tanh(self.body(x)))


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = Classifier().double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 4, (12,))
    full = curvature_operator(model, (x, y), dtype=torch.float64)
    return model, (x, y), full, dense_matrices(full, EQ4_COMPONENTS)


# --- parameter blocks --------------------------------------------------------------


def test_layer_blocks_group_by_owning_module(classifier):
    model = classifier[0]
    assert layer_blocks(model) == {
        "body.0": ["body.0.weight", "body.0.bias"],
        "body.2": ["body.2.weight", "body.2.bias"],
    }


@pytest.mark.parametrize(
    "params, names",
    [
        (r"body\.2\..*", ["body.2.weight", "body.2.bias"]),
        (["body.2.bias", "body.0.weight"], ["body.0.weight", "body.2.bias"]),
        ("module", ["body.0.weight", "body.0.bias"]),
    ],
)
@pytest.mark.parametrize("component", EQ4_COMPONENTS)
def test_a_block_is_the_diagonal_block_of_the_dense_matrix(classifier, params, names, component):
    model, data, full, dense = classifier
    if params == "module":
        params = [model.body[0]]
    op = curvature_operator(model, data, component, dtype=torch.float64, params=params)
    assert op.param_names == names
    block = diagonal_block(dense[component], full, names)
    assert op.dim == block.shape[0]
    V = vector(op.dim, k=3)
    assert rel(op.matmat(V), block @ V) <= 1e-10
    assert torch.equal(model.body[0].weight, model.body[0].weight.detach()), "model untouched"


@pytest.mark.parametrize(
    "params, culprit",
    [
        ("nothing.*", "params: the pattern 'nothing.*' matches no trainable parameter"),
        ("body", "params: the pattern 'body' matches no trainable"),
        (["body.0.weight", "fc.weight"], "params: 'fc.weight' is not a parameter of the model"),
        (["frozen.weight"], r"params: 'frozen.weight' is frozen \(requires_grad=False\)"),
        ([nn.Linear(2, 2)], "params: the module Linear is not part of the model"),
        ("(", "params: '\\(' is not a regular expression"),
        ([], "params: got list"),
        ([3], "params: an item of type int"),
    ],
)
def test_a_bad_block_names_the_culprit(classifier, params, culprit):
    model, data, _, _ = classifier
    with pytest.raises(HspecError, match=culprit):
        curvature_operator(model, data, params=params)
    frozen_module = [model.frozen]
    with pytest.raises(HspecError, match="params: the module Linear 'frozen' has no trainable"):
        curvature_operator(model, data, params=frozen_module)
