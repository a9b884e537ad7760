"""Any model a researcher brings (issue 12): parameter blocks, losses, structured batches
and transformers, each against dense references from an independent code path (float64)."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hspec import HspecError, curvature_operator
from hspec.curvature.blocks import layer_blocks
from hspec.curvature.exact import dense_matrices
from hspec.curvature.operators import EQ4_COMPONENTS, HVP_MODES, ComposedLayerNorm, eval_mode
from hspec.pipeline.transformer import TinyCausalLM, synthetic_tokens


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
    "params, dual",
    [
        (r"body\.0\..*", ["body.2.bias", "body.2.weight", "frozen.bias", "frozen.weight"]),
        (r"body\.2\..*", ["frozen.bias", "frozen.weight"]),
        (None, ["frozen.bias", "frozen.weight"]),
    ],
)
def test_held_parameters_downstream_of_the_block_are_dual_and_products_exact(
    classifier, params, dual
):
    """BlockReach: the held parameters that meet the block's values, and only those (not
    body.0 upstream of body.2), are dual with zero tangents in the forward-mode passes;
    every mode's products stay the dense matrix's diagonal block."""
    model, data, full, dense = classifier
    for hvp in HVP_MODES:
        for component in EQ4_COMPONENTS:
            op = curvature_operator(
                model, data, component, dtype=torch.float64, params=params, hvp=hvp
            )
            V = vector(op.dim, k=2)
            got = op.matmat(V)
            assert sorted(op._held[0]) == dual
            assert all(torch.count_nonzero(t) == 0 for t in op._held[1].values())
            block = diagonal_block(dense[component], full, op.param_names)
            assert rel(got, block @ V) <= 1e-10, (hvp, component)


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


# --- transformers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    """A one-block causal LM with dropout (training mode: the operators must switch it
    off), on 5 next-token sequences of 4 tokens, one label ignored, in batches of 3."""
    torch.manual_seed(0)
    model = TinyCausalLM(vocab_size=5, context=4, width=4, heads=2, layers=1, dropout=0.2)
    model = model.double().train()
    data = synthetic_tokens(5, context=4, vocab_size=5, seed=1)
    data["labels"][1, 0] = -100
    return model, data


def test_tiny_transformer_hessian_equals_torch_func_hessian(tiny_lm):
    model, data = tiny_lm
    op = curvature_operator(model, data, dtype=torch.float64, batch_size=3)
    names = list(op.params)
    shapes = [p.shape for p in op.params.values()]
    flat = torch.cat([p.reshape(-1) for p in op.params.values()])

    def mean_loss(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        logits = torch.func.functional_call(model, params, (data["input_ids"],))
        return nn.functional.cross_entropy(logits.reshape(-1, 5), data["labels"].reshape(-1))

    # math attention (flash has no forward-mode rule); torch's nested layer_norm rules are off
    with eval_mode(model), sdpa_kernel(SDPBackend.MATH), ComposedLayerNorm():
        exact = torch.func.hessian(mean_loss)(flat)
    assert model.training
    V = vector(op.dim, k=3)
    for hvp in HVP_MODES:
        op = curvature_operator(model, data, dtype=torch.float64, batch_size=3, hvp=hvp)
        assert rel(op.matmat(V), exact @ V) <= 1e-10, hvp
        # the first pass found the layer_norm: later products compose it too
        assert op._layer_norm is True and rel(op.matmat(V), exact @ V) <= 1e-10, hvp
    assert model.training, "the training flag is restored"


def test_a_model_without_layer_norm_skips_its_composition(classifier):
    model, data, full, dense = classifier
    op = curvature_operator(model, data, dtype=torch.float64, hvp="reverse-over-forward")
    assert op._layer_norm is None  # unknown before the first pass: composed, to be safe
    V = vector(op.dim, k=2)
    first, second = op.matmat(V), op.matmat(V)
    assert op._layer_norm is False
    assert rel(first, dense["hessian"] @ V) <= 1e-10 and rel(second, dense["hessian"] @ V) <= 1e-10


@pytest.mark.parametrize("component", ["gradient_covariance", "prediction_hessian"])
def test_tiny_transformer_g_and_r_equal_dense_and_add_up(tiny_lm, component):
    model, data = tiny_lm
    op = curvature_operator(model, data, component, dtype=torch.float64, batch_size=3)
    dense = dense_matrices(op)
    assert (
        rel(dense["gradient_covariance"] + dense["prediction_hessian"], dense["hessian"]) <= 1e-10
    )
    V = vector(op.dim, k=2)
    assert rel(op.matmat(V), dense[component] @ V) <= 1e-10
    attention = curvature_operator(
        model, data, component, dtype=torch.float64, params=r"blocks\.0\.attention\..*"
    )
    block = diagonal_block(dense[component], op, attention.param_names)
    assert rel(attention.matmat(V[: attention.dim]), block @ V[: attention.dim]) <= 1e-10
    upstream = ("token.", "position.", "blocks.0.norm1.", "blocks.0.attention.")
    assert set(attention._held[0]) == {n for n in op.params if not n.startswith(upstream)}


def test_composed_layer_norm_is_layer_norm():
    x, w, b = torch.randn(3, 2, 5).double(), torch.randn(2, 5).double(), torch.randn(2, 5).double()
    expected = nn.functional.layer_norm(x, (2, 5), w, b, eps=1e-3)
    with ComposedLayerNorm():
        assert torch.allclose(nn.functional.layer_norm(x, (2, 5), w, b, eps=1e-3), expected)
        assert torch.allclose(nn.LayerNorm(5).double()(x), nn.functional.layer_norm(x, (5,)))


class HFStyle(nn.Module):
    """Keyword inputs, a dict output with "logits" (as HuggingFace models return)."""

    def __init__(self):
        super().__init__()
        self.lm = TinyCausalLM(vocab_size=5, context=4, width=4, heads=2)

    def forward(self, input_ids, attention_mask):
        return {"logits": self.lm(input_ids) * attention_mask[..., None], "past": None}


def test_dict_batches_and_dict_outputs_of_a_huggingface_style_model(tiny_lm):
    _, data = tiny_lm
    torch.manual_seed(0)
    model = HFStyle().double()
    batch = {**data, "attention_mask": torch.ones_like(data["input_ids"])}
    op = curvature_operator(model, batch, dtype=torch.float64, batch_size=2)
    plain = curvature_operator(model.lm, data, dtype=torch.float64)
    v = vector(op.dim)
    assert op.param_names == ["lm." + n for n in plain.param_names]
    assert rel(op.matvec(v), plain.matvec(v)) <= 1e-12
    loader = torch.utils.data.DataLoader(
        [{k: t[i] for k, t in batch.items()} for i in range(5)], batch_size=2
    )
    assert (
        rel(curvature_operator(model, loader, dtype=torch.float64).matvec(v), plain.matvec(v))
        <= 1e-12
    )


# --- what is refused -----------------------------------------------------------------


class Noisy(nn.Module):
    def forward(self, h):
        return nn.functional.dropout(h, 0.5, training=True)


class WithNoise(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(5, 4)
        self.noisy = Noisy()
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.noisy(torch.tanh(self.hidden(x))))


def test_a_stochastic_module_in_eval_mode_is_named():
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    op = curvature_operator(WithNoise(), (x, y))
    with pytest.raises(
        HspecError,
        match=r"model: the module 'noisy' \(Noisy\) gives different outputs for the same batch "
        r"in eval mode \(dropout called with training=True",
    ):
        op.matvec(torch.randn(op.dim))

    def noisy_forward(model, batch):
        return model(batch[0]) + torch.randn(len(batch[0]), 3), batch[1]

    op = curvature_operator(Regressor(), (x, y), forward=noisy_forward)
    with pytest.raises(HspecError, match="model: the forward gives different outputs"):
        op.matvec(torch.randn(op.dim))


def scalar_loss(output, target):
    return ((output - target) ** 2).sum()


@pytest.mark.parametrize(
    "model, data, kwargs, culprit",
    [
        (
            Regressor(),
            (torch.randn(4, 5), torch.randn(4, 3)),
            {"loss": scalar_loss},
            r"loss: 'scalar_loss' returned \(\) for outputs of shape \(4, 3\); a loss callable "
            r"must return one loss per example, shape \(4,\)",
        ),
        (
            Regressor(),
            (torch.randn(4, 5), torch.randn(4)),
            {"loss": "mse"},
            r"model: returned shape \(4, 3\) for targets of shape \(4,\); mse needs outputs of "
            "the targets' shape",
        ),
        (
            TokenModel(),
            (torch.randint(0, 4, (4, 3)), torch.randint(0, 4, (4, 2))),
            {},
            r"model: returned shape \(4, 3, 4\) for targets of shape \(4, 2\); sequence "
            r"cross_entropy needs logits \(B, T, V\)",
        ),
        (
            TokenModel(),
            (torch.randint(0, 4, (4, 3)), torch.full((4, 3), -1)),
            {},
            r"data: target -1 is not a class index of the model's 4 outputs \(0 to 3\) or -100",
        ),
        (
            TokenModel(),
            (torch.randint(0, 4, (4, 3)), torch.randint(0, 4, (4, 3))),
            {"component": "class_g1"},
            r"component: 'class_g1' needs \(N, C\) logits and targets \(N,\)",
        ),
        (
            Regressor(),
            (torch.randn(4, 5), torch.randint(0, 3, (4,))),
            {"forward": lambda model, batch: model(batch[0])},
            "forward: returned a Tensor; it must return",
        ),
    ],
)
def test_bad_outputs_name_the_culprit_at_the_first_product(model, data, kwargs, culprit):
    op = curvature_operator(model, data, **kwargs)
    with pytest.raises(HspecError, match=culprit):
        op.matvec(torch.randn(op.dim))


@pytest.mark.parametrize(
    "data, kwargs, culprit",
    [
        ((torch.randn(4, 5), torch.randn(4, 3)), {"loss": "hinge"}, "loss: unknown 'hinge'"),
        (
            (torch.randn(4, 5), torch.randn(4, 3)),
            {"loss": "mse", "component": "class_g0"},
            "loss: 'mse' is not supported by the component 'class_g0'",
        ),
        (
            (torch.randn(4, 5), torch.randint(0, 3, (4,))),
            {"loss": "mse"},
            "data: mse needs floating-point targets",
        ),
        (
            ((torch.randn(2, 5), torch.randint(0, 3, (2,))) for _ in range(2)),
            {},
            "data: a generator can be read only once",
        ),
        (
            [(torch.randn(2, 5), torch.randint(0, 3, (2,)))] * 2,
            {"batch_size": 2},
            "batch_size: cannot be given with batches as given",
        ),
        (
            {"inputs": torch.randn(4, 5), "labels": torch.zeros(3, dtype=torch.int64)},
            {},
            "data: the tensors of a dict must have one leading size",
        ),
        (
            (torch.randn(4, 5), torch.randint(0, 3, (4,))),
            {"forward": 3},
            "forward: must be a callable",
        ),
    ],
)
def test_bad_arguments_name_the_culprit(data, kwargs, culprit):
    with pytest.raises(HspecError, match=culprit):
        curvature_operator(Regressor(), data, **kwargs)


def test_the_readme_section_runs_and_covers_each_feature():
    """The snippets of README.md's "Losses, batches, parameter blocks, transformers" run
    (tests/test_packaging.py runs every README block too; this one names what they show)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Losses, batches, parameter blocks, transformers")[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ")[0].split("\n### ")[0], re.S)
    code = "\n".join(blocks)
    for feature in (
        'loss="mse"',
        "loss=log_cosh",
        "params=",
        "layer_blocks",
        "forward=",
        "TinyCausalLM",
        "GPT2LMHeadModel",
    ):
        assert feature in code, feature
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_a_huggingface_gpt2_from_a_config():
    """A randomly initialised HuggingFace GPT-2 (no download): dict batches, a ModelOutput
    with .logits, tied embeddings, dropout and sdpa attention, every hvp mode against the
    dense H, G and R. Skipped where transformers is not installed."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=7, n_positions=4, n_embd=4, n_layer=1, n_head=2, attn_implementation="sdpa"
    )
    model = transformers.GPT2LMHeadModel(config).double()
    data = synthetic_tokens(4, context=4, vocab_size=7, seed=2)
    op = curvature_operator(model, data, dtype=torch.float64, batch_size=3)
    assert "lm_head.weight" not in op.param_names  # tied to transformer.wte.weight
    dense = dense_matrices(op)
    assert (
        rel(dense["gradient_covariance"] + dense["prediction_hessian"], dense["hessian"]) <= 1e-10
    )
    V = vector(op.dim, k=2)
    for component in EQ4_COMPONENTS:
        for hvp in HVP_MODES:
            op = curvature_operator(
                model, data, component, dtype=torch.float64, batch_size=3, hvp=hvp
            )
            assert rel(op.matmat(V), dense[component] @ V) <= 1e-10, (component, hvp)


def test_a_forward_may_use_the_model_object_it_closes_over(classifier):
    """functional_call swaps the parameters of the model object itself, so a forward that
    ignores its model argument and calls the model it closes over is differentiated too."""
    model, data, full, dense = classifier
    op = curvature_operator(
        model, data, dtype=torch.float64, forward=lambda _, batch: (model(batch[0]), batch[1])
    )
    v = vector(op.dim)
    assert rel(op.matvec(v), dense["hessian"] @ v) <= 1e-10
