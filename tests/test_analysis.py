"""hspec.numerics.analysis against exact references (scipy's W1 on weighted samples)."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from hspec.numerics.analysis import asymmetry, wasserstein1


@pytest.mark.parametrize("seed", range(4))
def test_wasserstein1_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=37), rng.standard_t(3, size=23) + 0.3
    ma, mb = rng.uniform(0.1, 1, size=37), rng.uniform(0.1, 1, size=23)
    got = wasserstein1(a, ma, b, mb)
    assert got == pytest.approx(wasserstein_distance(a, b, ma, mb), rel=1e-12)


def test_wasserstein1_of_a_shift_is_the_shift_and_masses_are_normalized():
    atoms = np.array([-1.0, 0.5, 2.0])
    assert wasserstein1(atoms, [1, 2, 3], atoms + 0.25, [10, 20, 30]) == pytest.approx(0.25)
    assert wasserstein1(atoms, [1, 2, 3], atoms, [1, 2, 3]) == 0.0


def test_asymmetry_is_zero_when_symmetric_and_one_when_one_signed():
    atoms = np.array([0.5, 1.0, 3.0])
    assert asymmetry(np.concatenate([atoms, -atoms]), np.ones(6)) == pytest.approx(0.0)
    assert asymmetry(atoms, [1.0, 2.0, 1.0]) == pytest.approx(1.0)
