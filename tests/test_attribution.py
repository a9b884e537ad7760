"""The class-structure attribution of a spectrum (hspec.curvature.attribution) against dense
matrices on tiny float64 nets, its two routes against each other, and the spectrum job
storing it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hspec import HspecError, curvature_operator
from hspec.curvature import attribution as at
from hspec.curvature.exact import class_mean_vectors, dense_matrices, eigenvalues
from hspec.pipeline import cli, data, run_files, store

COUNTS = {"balanced": [8, 8, 8], "unbalanced": [10, 7, 4, 2]}


@pytest.fixture(scope="module", params=list(COUNTS))
def problem(request):
    counts = COUNTS[request.param]
    classes = len(counts)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, classes)).double()
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y))]
    x = torch.randn(len(y), 5, dtype=torch.float64) + y[:, None]
    op = curvature_operator(model, (x, y), "gradient_covariance", dtype=torch.float64)
    parts = ("gradient_covariance", "class_g0", "class_g1", "class_g2", "class_g1_g2")
    dense = dense_matrices(op, parts + ("class_g0_g1_g2", "class_within"))
    return model, x, y, dense


def top(matrix, k):
    return eigenvalues(matrix)[::-1][:k]


def attribution(model, x, y, outliers, **kw):
    return at.class_attribution(model, (x, y), outliers, batch_size=5, dtype=torch.float64, **kw)


def test_class_mean_matrix_equals_the_reference_means(problem):
    model, x, y, _ = problem
    op = curvature_operator(model, (x, y), "class_g1", batch_size=5, dtype=torch.float64)
    means, counts = at.class_mean_matrix(op, chunk=2)
    reference, reference_counts = class_mean_vectors(op)
    assert torch.equal(counts, reference_counts)
    assert float((means - reference.flatten(0, 1)).norm() / reference.norm()) <= 1e-12


def test_gram_route_equals_dense_eigenvalues_and_traces(problem):
    model, x, y, dense = problem
    C = model[-1].out_features
    outliers = top(dense["gradient_covariance"], C)
    result = attribution(model, x, y, outliers, route="gram", probes=4)
    assert result["route"] == "gram" and result["num_classes"] == C
    ranks = {"class_g0": C, "class_g1": C, "class_g2": C * (C - 2), "class_g1_g2": C * (C - 1)}
    for part, rank in {**ranks, "class_g0_g1_g2": C * C}.items():
        values = result["values"][part]
        assert len(values) == rank
        k = min(rank, dense[part].shape[0])
        scale = abs(top(dense[part], 1)[0])
        assert np.abs(values[:k] - top(dense[part], k)).max() <= 1e-10 * scale, part
        assert abs(result["traces"][part] - float(torch.trace(dense[part]))) <= 1e-10 * scale
    for part in at.MATCHED:
        expected = np.abs(top(dense[part], C) - outliers) / outliers
        assert np.allclose(result["relative_errors"][part], expected, rtol=1e-8, atol=1e-12)
        assert result["explained"][part] == int((expected <= at.EXPLAINED_RTOL).sum())
    # the same outliers in another order, and an explained one by construction
    shuffled = attribution(model, x, y, outliers[::-1], route="gram", probes=2)
    assert np.array_equal(shuffled["outliers"], result["outliers"])
    exact = attribution(model, x, y, top(dense["class_g1"], C), route="gram", probes=2)
    assert exact["explained"]["class_g1"] == C


def test_quadratic_forms_equal_dense(problem):
    model, x, y, dense = problem
    op = curvature_operator(model, (x, y), "gradient_covariance", batch_size=5, dtype=torch.float64)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g, between = at.quadratic_forms(op, v)
    assert abs(g - float(v @ dense["gradient_covariance"] @ v)) <= 1e-10 * abs(g)
    assert abs(between - float(v @ dense["class_g0_g1_g2"] @ v)) <= 1e-10 * abs(between)


def test_the_trace_estimate_is_unbiased_within_its_error(problem):
    model, x, y, dense = problem
    C = model[-1].out_features
    result = attribution(model, x, y, np.ones(C), route="gram", probes=100, seed=1)
    true = float(torch.trace(dense["class_within"]))
    assert (
        abs(result["traces"]["class_within"] - true) <= 4 * result["trace_stderr"]["class_within"]
    )
    total = float(torch.trace(dense["gradient_covariance"]))
    assert (
        abs(result["traces"]["gradient_covariance"] - total)
        <= 4 * result["trace_stderr"]["gradient_covariance"]
    )
    shares = result["trace_shares"]
    assert shares["gradient_covariance"] == 1.0
    parts = shares["class_g0"] + shares["class_g1"] + shares["class_g2"] + shares["class_within"]
    assert abs(parts - 1.0) <= 1e-12


def test_gram_and_lanczos_routes_agree(problem):
    model, x, y, dense = problem
    C = model[-1].out_features
    outliers = top(dense["gradient_covariance"], C)
    gram = attribution(model, x, y, outliers, route="gram", probes=2)
    lanczos = attribution(model, x, y, outliers, route="lanczos", probes=2)
    assert lanczos["route"] == "lanczos"
    for part in at.LANCZOS_PARTS:
        a, b = gram["values"][part][:C], lanczos["values"][part]
        assert np.abs(a - b).max() <= 1e-8 * abs(a[0]), part
    for part in at.MATCHED:
        assert np.allclose(
            gram["relative_errors"][part], lanczos["relative_errors"][part], atol=1e-8
        )
    assert lanczos["values"]["class_g2"].size == 0
    tiny = attribution(model, x, y, outliers, memory_budget=1, probes=2)
    assert tiny["route"] == "lanczos"  # C²·p does not fit one byte


def test_a_bad_route_is_one_error(problem):
    model, x, y, _ = problem
    with pytest.raises(HspecError, match="route"):
        attribution(model, x, y, np.ones(3), route="dense")


def test_ritz_outliers_drop_ghosts_and_light_nodes():
    nodes = np.array([5.0, 5.0 + 1e-9, 4.0, 4.5, 3.0, 0.1, 0.0])
    weights = np.array([1e-3, 1e-3, 1e-3, 1e-20, 1e-3, 0.5, 0.5])
    assert np.array_equal(at.ritz_outliers(nodes, weights, 1000, 3), [5.0 + 1e-9, 4.0, 3.0])


def test_spectrum_outliers_come_from_deflation_ritz_values_or_krylov(problem):
    model, x, y, dense = problem
    C = model[-1].out_features
    op = curvature_operator(model, (x, y), "gradient_covariance", dtype=torch.float64)
    exact = top(dense["gradient_covariance"], C)
    nodes = np.concatenate([exact, [1e-3, 0.0]])

    def result(outliers):
        weights = np.full(len(nodes), 1e-3)
        return SimpleNamespace(outliers=outliers, nodes=nodes, weights=weights, dim=op.dim)

    values, source = at.spectrum_outliers(result(exact[::-1]), op, C, 1e-10)
    assert source == "deflated" and np.array_equal(values, exact)
    values, source = at.spectrum_outliers(result(np.empty(0)), op, C, 1e-10)
    assert source == "ritz" and np.array_equal(values, exact)
    # deflated with fewer than C: its nodes are of P G P, so the top C are computed
    values, source = at.spectrum_outliers(result(exact[:1]), op, C, 1e-10)
    assert source == "krylov" and np.allclose(values, exact, rtol=1e-8)


def test_the_spectrum_job_stores_the_attribution(tmp_path, one_thread):
    run = tmp_path / "run"
    train = ["train", "--dataset", "digits", "--arch", "mlp", "--lr", "0.05", "--epochs", "1"]
    assert cli.main([*train, "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "g.zarr"
    options = ["--dataset", "digits", "--split", "test", "--steps", "12", "--bound-steps", "8"]
    options += ["--points", "64", "--device", "cpu", "--component", "gradient_covariance"]
    assert cli.main(["spectrum", "--model", str(run / "model.pt"), *options, "--quiet",
                     "--out", str(out)]) == 0  # fmt: skip
    stored = store.read_attribution(out)
    assert stored["outlier_source"] in ("ritz", "krylov")
    model, _ = run_files.load_model(run / "model.pt")
    inputs, targets = data.load_split("digits", "test")
    again = at.class_attribution(model, (inputs, targets), stored["outliers"])
    for part in store.ATTRIBUTION_PARTS:
        assert np.allclose(stored["values"][part], again["values"][part], rtol=1e-5), part
    for part in at.MATCHED:
        assert stored["explained"][part] == again["explained"][part]
    assert stored["traces"] == pytest.approx(again["traces"], rel=1e-5)
    result = store.read_result(out)
    assert len(stored["outliers"]) == 10 and result.outliers.size == 0
