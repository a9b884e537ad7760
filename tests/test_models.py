"""Networks: the paper's parameter counts, input shapes, and the demo nets' size and cost."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hspec.errors import HspecError
from hspec.pipeline import models

DIGITS_TRAIN_SIZE = 1437


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "count"), [("vgg11", 28_157_706), ("resnet18", 11_173_962)])
def test_paper_networks_have_the_paper_parameter_counts_on_cifar10(name: str, count: int) -> None:
    assert num_parameters(models.create(name, 3, 10)) == count


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
@pytest.mark.parametrize(("channels", "classes"), [(1, 10), (3, 100)])
def test_paper_networks_map_32x32_inputs_to_class_logits(
    name: str, channels: int, classes: int
) -> None:
    model = models.create(name, channels, classes).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, 32, 32))
    assert logits.shape == (2, classes)


def test_vgg11_classifier_is_bias_free_with_batchnorm() -> None:
    linears = [m for m in models.create("vgg11", 3, 10).modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (512, 4096, False),
        (4096, 4096, False),
        (4096, 10, True),
    ]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in models.create("vgg11", 3, 10).modules()) == 2


def test_resnet18_has_a_3x3_stem_and_no_max_pool() -> None:
    model = models.create("resnet18", 3, 10)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 32), (3, 32)])
def test_demo_networks_accept_digits_and_32x32_inputs(name: str, channels: int, size: int) -> None:
    model = models.create(name, channels, 10).eval()
    with torch.no_grad():
        assert model(torch.randn(4, channels, size, size)).shape == (4, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_demo_networks_are_overparameterized_for_digits(name: str) -> None:
    # The paper's C outliers need p >> n; p = 12k was measured to be too small.
    assert num_parameters(models.create(name, 1, 10)) > 50 * DIGITS_TRAIN_SIZE


def test_demo_cnn_has_batchnorm() -> None:
    assert any(isinstance(m, nn.BatchNorm2d) for m in models.create("cnn", 1, 10).modules())


@pytest.mark.parametrize(("name", "budget"), [("mlp", 10e9), ("cnn", 20e9)])
def test_hessian_vector_product_over_digits_train_split_is_cheap(name: str, budget: float) -> None:
    # Counted, not timed, so that a busy machine cannot fail it: two CPU cores sustain about
    # 50 GFLOP/s on these layers, so 20 GFLOP is about 0.4 s (measured: cnn 0.36 s, mlp 0.07 s).
    torch.manual_seed(0)
    model = models.create(name, 1, 10).eval()
    inputs, targets = (
        torch.randn(DIGITS_TRAIN_SIZE, 1, 8, 8),
        torch.randint(0, 10, (DIGITS_TRAIN_SIZE,)),
    )
    params = list(model.parameters())
    with FlopCounterMode(display=False) as counter:
        grads = torch.autograd.grad(
            nn.functional.cross_entropy(model(inputs), targets), params, create_graph=True
        )
        torch.autograd.grad(grads, params, grad_outputs=[torch.randn_like(p) for p in params])
    assert 0 < counter.get_total_flops() < budget


def test_unknown_network_lists_the_valid_names() -> None:
    with pytest.raises(HspecError, match="unknown network 'vgg16'.*vgg11, resnet18, mlp, cnn"):
        models.create("vgg16", 3, 10)
