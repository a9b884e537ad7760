"""Curvature operators against dense matrices from an independent code path (float64)."""

import pytest
import torch
from torch import nn

from hspec import HspecError, curvature_operator
from hspec.curvature.exact import dense_matrices
from hspec.curvature.operators import AUTO_HVP, COMPONENTS, HVP_MODES, float32_matmul

N = 20


class TinyCNN(nn.Module):
    """Conv + BatchNorm (eval mode: running statistics) + a frozen and an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.frozen(self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1)))


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 7), nn.Tanh(), nn.Linear(7, 4))


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def problem(request):
    torch.manual_seed(0)
    model = (tiny_mlp() if request.param == "mlp" else TinyCNN()).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    model.train()  # the operator must switch to eval mode itself
    x = torch.randn(N, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (N,))
    op = curvature_operator(model, (x, y), "hessian", dtype=torch.float64)
    return model, x, y, dense_matrices(op)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("batch_size", [1, 7, N])
def test_matvec_equals_dense(problem, component, batch_size):
    model, x, y, dense = problem
    op = curvature_operator(model, (x, y), component, batch_size=batch_size, dtype=torch.float64)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert rel(op.matvec(v), dense[component] @ v) <= 1e-10
    assert model.training, "the model's training flag must be restored"


@pytest.mark.parametrize("component", ["hessian", "prediction_hessian"])
@pytest.mark.parametrize("hvp", HVP_MODES)
def test_every_hvp_mode_equals_dense(problem, component, hvp):
    model, x, y, dense = problem
    op = curvature_operator(
        model, (x, y), component, batch_size=7, dtype=torch.float64, hvp=hvp, block_size=2
    )
    V = torch.randn(op.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert rel(op.matvec(V[:, 0]), dense[component] @ V[:, 0]) <= 1e-10
    assert rel(op.matmat(V), dense[component] @ V) <= 1e-10  # vmap blocks of 2, then 1


def test_resident_data_give_the_same_products(problem):
    model, x, y, dense = problem
    op = curvature_operator(
        model, (x, y), "hessian", batch_size=7, dtype=torch.float64, resident=True
    )
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel(op.matvec(v), dense["hessian"] @ v) <= 1e-10
    with pytest.raises(HspecError, match="resident: needs data as an"):
        curvature_operator(model, torch.utils.data.TensorDataset(x, y), resident=True)


def test_tf32_flags_are_set_for_the_products_and_restored():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, True  # PyTorch's defaults
        for tf32 in (True, False):
            with float32_matmul(torch.device("cuda"), tf32):
                assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)
        with float32_matmul(torch.device("cpu"), True):
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_hessian_is_sum_of_components(problem):
    _, _, _, dense = problem
    assert (
        rel(dense["gradient_covariance"] + dense["prediction_hessian"], dense["hessian"]) <= 1e-10
    )


@pytest.mark.parametrize("component", COMPONENTS)
def test_batch_size_does_not_change_the_average(problem, component):
    model, x, y, _ = problem
    v = torch.randn(
        sum(p.numel() for p in model.parameters() if p.requires_grad), dtype=torch.float64
    )
    results = [
        curvature_operator(model, (x, y), component, batch_size=b, dtype=torch.float64).matvec(v)
        for b in (1, 7, N)
    ]
    assert rel(results[0], results[2]) <= 1e-12
    assert rel(results[1], results[2]) <= 1e-12


def test_matmat_equals_columns(problem):
    model, x, y, _ = problem
    op = curvature_operator(model, (x, y), "gradient_covariance", dtype=torch.float64)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    expected = torch.stack([op.matvec(c) for c in V.T], 1)
    assert rel(op.matmat(V), expected) <= 1e-14


def test_frozen_and_unused_parameters():
    model = TinyCNN().double()
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (5,))
    op = curvature_operator(model, (x, y), "hessian", dtype=torch.float64)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert op.dim == sum(p.numel() for p in trainable)
    assert "frozen.weight" not in op.params
    hv = op.matvec(torch.ones(op.dim, dtype=torch.float64))
    tail = model.unused.weight.numel() + model.unused.bias.numel()
    assert torch.all(hv[-tail:] == 0), "an unused parameter must give zeros"
    assert hv[:-tail].abs().sum() > 0


def test_dataset_and_dataloader_give_the_same_result(problem):
    model, x, y, dense = problem
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True)
    v = torch.randn(dense["hessian"].shape[0], dtype=torch.float64)
    for data in (dataset, loader):
        kwargs = {} if data is loader else {"batch_size": 3}
        op = curvature_operator(model, data, "prediction_hessian", dtype=torch.float64, **kwargs)
        assert rel(op.matvec(v), dense["prediction_hessian"] @ v) <= 1e-10


def test_float32_is_the_default():
    model = tiny_mlp()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,))
    op = curvature_operator(model, (x, y))
    assert op.dtype == torch.float32
    assert op.hvp == AUTO_HVP["cpu"] == "reverse-over-forward" and not op.tf32
    assert op.matvec(torch.randn(op.dim)).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"component": "fisher"}, "component"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": torch.int64}, "dtype"),
        ({"hvp": "finite-differences"}, "hvp: unknown 'finite-differences'"),
        ({"tf32": True, "dtype": torch.float64}, "tf32: only applies to float32"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, culprit):
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 4, (4,))
    with pytest.raises(HspecError, match=culprit):
        curvature_operator(tiny_mlp(), (x, y), **kwargs)


@pytest.mark.parametrize(
    "data, culprit",
    [
        ((torch.randn(4, 1, 6, 6), torch.randint(0, 4, (5,))), "4 inputs but 5 targets"),
        ((torch.randn(4, 1, 6, 6), torch.rand(4)), "int64"),
        ([1, 2, 3], "data"),
    ],
)
def test_bad_data(data, culprit):
    with pytest.raises(HspecError, match=culprit):
        curvature_operator(tiny_mlp(), data)


def test_vectors_of_the_wrong_kind_are_refused():
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 4, (4,))
    op = curvature_operator(tiny_mlp(), (x, y))
    with pytest.raises(HspecError, match="dtype"):
        op.matvec(torch.randn(op.dim, dtype=torch.float64))
    with pytest.raises(HspecError, match="shape"):
        op.matvec(torch.randn(op.dim + 1))
    with pytest.raises(HspecError, match="device"):
        op.matvec(torch.randn(op.dim, device="meta"))


@pytest.mark.parametrize("component", COMPONENTS)
def test_vectorized_blocks_equal_single_products(problem, component):
    model, x, y, dense = problem
    op = curvature_operator(
        model, (x, y), component, batch_size=7, dtype=torch.float64, block_size=3
    )
    V = torch.randn(op.dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert rel(op.matmat(V), dense[component] @ V) <= 1e-10


# --- what the operators accept: checks of the model, the data and the dtype ---------


class AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode: a stochastic operator."""

    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=True)


class Pair(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :4], x


class DictData(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.randn(1, 6, 6), "y": 0}


def small_data(n=4):
    return torch.randn(n, 1, 6, 6), torch.randint(0, 4, (n,))


def test_the_operator_base_checks_inputs_and_counts_products():
    from hspec.numerics.linear_operator import SymmetricOperator

    op = curvature_operator(tiny_mlp(), small_data())
    assert isinstance(op, SymmetricOperator)
    V = torch.randn(op.dim, 3)
    assert torch.allclose(op @ V, torch.stack([op @ c for c in V.T], 1), atol=1e-6)
    assert op.hvp_count == 3 + 3
    with pytest.raises(HspecError, match=r"V: expected shape \(dim, k\)"):
        op.matmat(torch.randn(op.dim))
    assert op.hvp_count == 6


@pytest.mark.parametrize(
    "model, shape",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(36, 1), nn.Flatten(0)), r"\(4,\)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(36, 1)), r"\(4, 1\)"),
    ],
)
def test_logits_that_are_not_n_by_c_are_refused(model, shape):
    op = curvature_operator(model, small_data())
    with pytest.raises(
        HspecError,
        match=rf"model: returned shape {shape} for a batch of 4; "
        r"hspec needs logits of shape \(N, C\), C ≥ 2",
    ):
        op.matvec(torch.randn(op.dim))


def test_a_model_returning_a_tuple_is_refused():
    model = nn.Sequential(nn.Linear(1, 1), Pair())
    op = curvature_operator(model, (torch.randn(4, 1), torch.zeros(4, dtype=torch.int64)))
    with pytest.raises(
        HspecError,
        match=r"model: returned a tuple; hspec needs a model "
        r"returning one \(N, C\) tensor of logits",
    ):
        op.matvec(torch.randn(op.dim))


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("label", [4, -1])
def test_targets_outside_the_classes_are_refused(component, label):
    x, y = small_data(8)
    y[5] = label
    op = curvature_operator(tiny_mlp(), (x, y), component, batch_size=3)
    with pytest.raises(
        HspecError,
        match=rf"data: target {label} is not a class index of "
        r"the model's 4 outputs \(0 to 3\)",
    ):
        op.matvec(torch.randn(op.dim))


def test_a_dataset_of_dicts_is_refused_saying_what_is_supported():
    op = curvature_operator(tiny_mlp(), DictData())
    with pytest.raises(
        HspecError,
        match=r"data: a batch is a dict, not an \(inputs, "
        r"targets\) pair of tensors; supported: .* Dataset or DataLoader",
    ):
        op.matvec(torch.randn(op.dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused(dtype):
    with pytest.raises(HspecError, match="dtype: must be torch.float32 or torch.float64"):
        curvature_operator(tiny_mlp(), small_data(), dtype=dtype)


def test_a_stochastic_operator_fails_the_probe():
    from hspec import spectral_density

    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 7), AlwaysDropout(), nn.Linear(7, 4))
    op = curvature_operator(model, small_data(), dtype=torch.float64)
    with pytest.raises(
        HspecError,
        match=r"model: the module '2' \(AlwaysDropout\) gives different outputs for the same "
        "batch in eval mode",
    ):
        spectral_density(op, steps=4, bound_steps=4, points=8)
    deterministic = curvature_operator(tiny_mlp(), small_data())
    deterministic.check_symmetric(torch.Generator().manual_seed(0))
    assert deterministic.hvp_count == 3
