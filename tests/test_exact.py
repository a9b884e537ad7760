"""The Gram-matrix route to the spectrum of G (no p×p matrix) against the dense G."""

import numpy as np
import torch
from torch import nn

from hspec import curvature_operator
from hspec.curvature.exact import dense_matrices, eigenvalues, gram_spectrum


def test_gram_spectrum_equals_dense_nonzero_spectrum():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 16, 5)
    ).double()
    x, y = torch.randn(24, 1, 6, 6, dtype=torch.float64), torch.randint(0, 5, (24,))
    op = curvature_operator(
        model, (x, y), "gradient_covariance", batch_size=10, dtype=torch.float64
    )
    dense = eigenvalues(dense_matrices(op, ["gradient_covariance"])["gradient_covariance"])
    gram = gram_spectrum(op)
    assert len(gram) == 24 * 5 < op.dim
    # G = V Vᵀ has rank ≤ n(C − 1): each B_i has the null vector √p_i
    rank = 24 * 4
    assert np.allclose(gram[-rank:], dense[-rank:], rtol=0, atol=1e-8 * dense[-1])
    assert np.all(np.abs(gram[:-rank]) <= 1e-10 * dense[-1])
    assert np.all(np.abs(dense[:-rank]) <= 1e-10 * dense[-1])
