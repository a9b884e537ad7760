"""Shared fixtures."""

from collections.abc import Iterator

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from hspec import curvature_operator
from hspec.curvature.exact import dense_matrices, eigenvalues


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread: small CPU trainings are as fast, and far less slowed by a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_cnn_hessian():
    """The exact Hessian of a small CNN with BatchNorm briefly trained on 100 digits
    (826 parameters), and its operator."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images[:100], dtype=torch.float64)[:, None] / 16
    y = torch.tensor(digits.target[:100])
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(72, 10),
    ).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    op = curvature_operator(model, (x, y), "hessian", dtype=torch.float64)
    matrix = dense_matrices(op, ["hessian"])["hessian"]
    return op, matrix, eigenvalues(matrix)
