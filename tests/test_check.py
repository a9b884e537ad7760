"""`hspec check` / hspec.check: hspec's estimate of a small model against its dense spectrum."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hspec
from hspec.curvature.check import compare
from hspec.errors import HspecError
from hspec.numerics.spectrum import spectral_density
from hspec.pipeline import cli, data, models

FAST = dict(deflate=10, deflation="krylov", steps=64, n_vec=2, points=256)


@pytest.fixture(scope="module")
def tiny():
    """The 442-parameter `tiny` net after a few full-batch steps on 200 digits."""
    torch.manual_seed(0)
    x, y = data.load_split("digits", "train", "data", False)
    x, y = x[:200], y[:200]
    model = models.create("tiny", 1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, (x, y)


def test_hspec_passes_the_exact_check_on_a_tiny_net(tiny):
    model, split = tiny
    report = hspec.check(model, split, "hessian", **FAST)
    assert report["passed"], report["failures"]
    assert report["n_params"] == 442 and len(report["outliers"]) == 10
    for row in report["outliers"]:
        assert row["interval_holds_exact"] and row["relative_error"] < 1e-5
    assert report["density"]["w1"] < 0.01 and report["density"]["l1"] < 0.3
    json.dumps(report)  # JSON-able


def test_an_unconverged_deflation_fails_the_verdict(tiny):
    model, split = tiny
    report = hspec.check(
        model, split, "gradient_covariance", **{**FAST, "deflation": "subspace"}, iterations=1
    )
    assert not report["passed"]
    assert any("relative error" in failure for failure in report["failures"])
    # the certificate still holds: an unconverged outlier's interval is wide, not wrong
    assert all(row["interval_holds_exact"] for row in report["outliers"])


def test_a_corrupted_operator_fails_the_verdict():
    exact = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 300), [5.0, 7.0]])
    values = torch.tensor(exact)
    options = dict(deflate=2, deflation="krylov", steps=64, n_vec=2, dtype=torch.float64)
    right = compare(spectral_density(lambda v: values * v, 302, **options), exact)
    assert right["passed"], right["failures"]
    # a product 5% too large (say, a wrong average): the outliers are off
    wrong = compare(spectral_density(lambda v: 1.05 * values * v, 302, **options), exact)
    assert not wrong["passed"]
    assert sum("interval holds no exact eigenvalue" in f for f in wrong["failures"]) == 2
    # a bulk 30% too wide, the outliers right: the density is off
    bulk = torch.cat([1.3 * values[:300], values[300:]])
    wrong = compare(spectral_density(lambda v: bulk * v, 302, **options), exact)
    assert [f.split(" ")[1] for f in wrong["failures"]] == ["w1", "l1"]
    with pytest.raises(HspecError, match="tolerances: unknown"):
        compare(spectral_density(lambda v: values * v, 302, **options), exact, {"w1": 0.1})


def test_a_model_too_large_is_refused_with_one_error(tiny):
    _, split = tiny
    with pytest.raises(HspecError, match=r"model: \d+ parameters, more than max_params = 5000"):
        hspec.check(models.create("mlp", 1, 10), split)
    with pytest.raises(HspecError, match="more than max_params = 100"):
        hspec.check(tiny[0], split, max_params=100)


def test_the_command_line_prints_a_table_and_writes_json(tmp_path, capsys):
    torch.set_num_threads(1)
    train = ["train", "--dataset", "digits", "--arch", "tiny", "--lr", "0.1", "--epochs", "1"]
    assert cli.main([*train, "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]) == 0
    model = str(tmp_path / "run" / "model.pt")
    check = ["check", "--model", model, "--dataset", "digits", "--split", "test", "--quiet"]
    check += ["--deflate", "10", "--deflation", "krylov", "--steps", "48", "--n-vec", "2"]
    check += ["--device", "cpu", "--points", "128"]
    capsys.readouterr()
    assert cli.main([*check, "--json", str(tmp_path / "check.json")]) == 0
    out = capsys.readouterr().out
    assert "442 parameters" in out and "verdict: PASSED" in out and out.count("holds exact") == 10
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and report["model"] == model and report["settings"]["steps"] == 48
    # a failed verdict: status 1 and the reasons
    assert cli.main([*check, "--deflation", "subspace", "--iterations", "1"]) == 1
    assert "verdict: FAILED" in capsys.readouterr().out
    assert cli.main([*check, "--max-params", "10"]) == 2
    assert "more than max_params = 10" in capsys.readouterr().err
