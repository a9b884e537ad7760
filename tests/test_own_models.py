"""Any model a researcher brings (issue 12): parameter blocks, losses, structured batches
and transformers, each against dense references from an independent code path (float64)."""

import pytest
import torch
from torch import nn

from hspec import HspecError, curvature_operator
from hspec.curvature.blocks import layer_blocks
from hspec.curvature.exact import dense_matrices
from hspec.curvature.operators import EQ4_COMPONENTS, HVP_MODES


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


# --- every loss × batch structure × hvp mode, whole model and a block ----------------


def nonconvex(output, target):
    """A per-example loss that is not convex in the outputs (G is indefinite)."""
    return torch.cos(output - target).sum(-1) + (output**2).sum(-1) / 10


class Regressor(nn.Module):
    """(N, 5) → (N, 3); takes its input positionally or as ``inputs=``."""

    def __init__(self, classes=3):
        super().__init__()
        self.hidden = nn.Linear(5, 4)
        self.out = nn.Linear(4, classes)

    def forward(self, inputs):
        return self.out(torch.tanh(self.hidden(inputs)))


class TokenModel(nn.Module):
    """Token ids (B, T) → logits (B, T, 4) through an embedding, a causal running mean and
    a tanh layer (so that positions interact)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.out = nn.Linear(3, 4)

    def forward(self, inputs):
        h = self.embed(inputs)
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[:, None]
        return self.out(torch.tanh(h))


class Packed:
    """A batch object no default understands: a forward unpacks it."""

    def __init__(self, features, scale, target):
        self.features, self.scale, self.target = features, scale, target


def packed_forward(model, batch):
    return model(batch.features * batch.scale), batch.target


N, T = 11, 3
LOSSES = ["cross_entropy", "sequence", "mse", "nonconvex"]
STRUCTURES = ["pair", "dict", "forward"]


def make_problem(loss, structure):
    """(model, data, curvature_operator kwargs, the block to test) for a loss and a
    batch structure: 11 examples in batches of 4 (the last one short)."""
    torch.manual_seed(0)
    if loss == "sequence":
        model = TokenModel().double()
        x = torch.randint(0, 4, (N, T))
        y = torch.randint(0, 4, (N, T))
        y[::3, -1] = -100  # ignored tokens
        block = ["embed.weight"]
    else:
        model = Regressor().double()
        x = torch.randn(N, 5, dtype=torch.float64)
        y = torch.randint(0, 3, (N,)) if loss == "cross_entropy" else torch.randn(N, 3).double()
        block = r"hidden\..*"
    kwargs = {
        "loss": nonconvex
        if loss == "nonconvex"
        else "cross_entropy"
        if loss == "sequence"
        else loss
    }
    if structure == "pair":
        data, kwargs["batch_size"] = (x, y), 4
    elif structure == "dict":
        data = [{"inputs": x[i : i + 4], "labels": y[i : i + 4]} for i in range(0, N, 4)]
    else:
        scale = torch.tensor(0.5, dtype=torch.float64) if loss != "sequence" else 1
        data = [Packed(x[i : i + 4], scale, y[i : i + 4]) for i in range(0, N, 4)]
        kwargs["forward"] = packed_forward
    return model, data, kwargs, block


@pytest.fixture(scope="module", params=[(lo, s) for lo in LOSSES for s in STRUCTURES], ids=str)
def own_problem(request):
    model, data, kwargs, block = make_problem(*request.param)
    full = curvature_operator(model, data, dtype=torch.float64, **kwargs)
    return model, data, kwargs, block, full, dense_matrices(full)


@pytest.mark.parametrize("component", EQ4_COMPONENTS)
@pytest.mark.parametrize("hvp", HVP_MODES)
def test_every_loss_structure_and_mode_equals_dense(own_problem, component, hvp):
    model, data, kwargs, block, full, dense = own_problem
    op = curvature_operator(
        model, data, component, dtype=torch.float64, hvp=hvp, block_size=2, **kwargs
    )
    V = vector(op.dim, k=3)
    assert rel(op.matvec(V[:, 0]), dense[component] @ V[:, 0]) <= 1e-10
    assert rel(op.matmat(V), dense[component] @ V) <= 1e-10


@pytest.mark.parametrize("component", EQ4_COMPONENTS)
def test_every_loss_and_structure_on_a_block(own_problem, component):
    model, data, kwargs, block, full, dense = own_problem
    op = curvature_operator(model, data, component, dtype=torch.float64, params=block, **kwargs)
    diagonal = diagonal_block(dense[component], full, op.param_names)
    assert rel(dense_matrices(op, [component])[component], diagonal) <= 1e-10
    V = vector(op.dim, k=2)
    assert rel(op.matmat(V), diagonal @ V) <= 1e-10


def test_h_is_g_plus_r_and_g_is_psd_for_convex_losses(own_problem):
    *_, full, dense = own_problem
    h, g, r = (dense[c] for c in EQ4_COMPONENTS)
    assert rel(g + r, h) <= 1e-10
    smallest = float(torch.linalg.eigvalsh(g)[0])
    if full.loss.name == "nonconvex":
        assert smallest < -1e-3  # not PSD: a loss not convex in the outputs
    else:
        assert smallest >= -1e-12 * float(g.norm())


def test_per_token_average_with_ignore_index_by_hand():
    """H of the mean over the counted tokens of −log softmax(f)[y], written out token by
    token, equals the operator's (tokens with −100 are not counted, wherever their batch)."""
    model, data, kwargs, _ = make_problem("sequence", "pair")
    x, y = data
    op = curvature_operator(model, data, dtype=torch.float64, **kwargs)
    names = list(op.params)
    counted = [(b, t) for b in range(N) for t in range(T) if y[b, t] != -100]
    assert len(counted) == N * T - 4

    def mean_loss(flat):
        params = dict(zip(names, torch.split(flat, [p.numel() for p in op.params.values()])))
        params = {n: params[n].view(op.params[n].shape) for n in names}
        logits = torch.func.functional_call(model, params, (x,))
        terms = [torch.logsumexp(logits[b, t], 0) - logits[b, t, y[b, t]] for b, t in counted]
        return sum(terms) / len(counted)

    flat = torch.cat([p.reshape(-1) for p in op.params.values()])
    by_hand = torch.func.hessian(mean_loss)(flat)
    assert rel(op.matmat(torch.eye(op.dim, dtype=torch.float64)), by_hand) <= 1e-10
