"""The figure notebooks: their papermill contract, their defaults, and their numbers on
synthetic spectra.

Small spectra of synthetic symmetric matrices with a known structure (a Wishart bulk
with planted spikes, a symmetric power-law spectrum) are stored with
``hspec.pipeline.store.write_spectrum``; every notebook is executed with papermill on them, and
the figures and numbers it writes are checked against what was planted. Every notebook
also runs as it is (no parameters) in a copy of the repository's layout holding such
spectra at exactly its default paths, the demo's.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

import hspec
from hspec.figures import captions, specs
from hspec.pipeline.store import write_blocks, write_spectrum

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [
    "fig1_train_hessian",
    "fig2_test_hessian",
    "fig3_deflation",
    "fig4_components",
    "fig5_sample_size",
    "fig7_blocks",
]
SPIKES = [20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0]  # 10 = C (digits)
TAIL_EXPONENT = 1.6
DEMO = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def spiked(p, spikes, seed, rank=150):
    """A Wishart bulk (rank < p: a mass at zero, as for a Hessian with p ≫ n; upper
    edge (p/rank)·(1 + sqrt(rank/p))² ≈ 8 for p = 500) plus well-separated spikes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, rank)) / np.sqrt(rank)
    matrix = x @ x.T
    if spikes:
        u = np.linalg.qr(rng.standard_normal((p, len(spikes))))[0]
        matrix += u @ np.diag(spikes) @ u.T
    return matrix


def power_law(p, seed, b=TAIL_EXPONENT, x0=0.03, x1=3.0, zeros=0.3):
    """A spectrum symmetric about 0: a share of zeros and ±x, x at the quantiles of the
    density ∝ x^(−b) on [x0, x1], in a random basis."""
    rng = np.random.default_rng(seed)
    k = (p - int(p * zeros)) // 2
    q = (np.arange(k) + 0.5) / k
    lo, hi = x0 ** (1 - b), x1 ** (1 - b)
    x = (lo + q * (hi - lo)) ** (1 / (1 - b))
    eigenvalues = np.concatenate([x, -x, np.zeros(p - 2 * k)])
    basis = np.linalg.qr(rng.standard_normal((p, p)))[0]
    return (basis * eigenvalues) @ basis.T


def store(
    path,
    matrix,
    *,
    split="train",
    component="hessian",
    per_class=20,
    n_samples=None,
    attribution=None,
    **settings,
):
    op = torch.tensor(matrix)
    result = hspec.spectral_density(
        lambda v: op @ v,
        matrix.shape[0],
        dtype=torch.float64,
        **{"steps": 64, "iterations": 64, **settings},
    )
    write_spectrum(
        path,
        result,
        {
            "dataset": "digits",
            "arch": "mlp",
            "split": split,
            "component": component,
            "n_per_class": per_class,
            "n_samples": n_samples if n_samples is not None else 10 * per_class,
        },
        attribution,
    )
    return str(path)


def planted_attribution(outliers, scale):
    """An attribution whose G1 eigenvalues are ``scale`` × the outliers (relative error
    |1 − scale|) and G0 + G1 + G2's the outliers themselves, for C = 10."""
    from hspec.curvature.attribution import match

    C = len(outliers)
    outliers = np.sort(np.asarray(outliers, dtype=float))[::-1]
    values = {
        "class_g0": 0.1 * outliers,
        "class_g1": scale * outliers,
        "class_g2": np.linspace(0.5, 0.01, C * (C - 2)),
        "class_g1_g2": np.concatenate([scale * outliers, np.linspace(0.5, 0.01, C * (C - 2))]),
        "class_g0_g1_g2": outliers,
    }
    parts = ("class_g1", "class_g0_g1_g2")
    matched = {part: match(outliers, values[part][:C], 0.1) for part in parts}
    shares = {"class_g0": 0.1, "class_g1": 0.3, "class_g2": 0.2, "class_within": 0.4}
    return {
        "values": values,
        "outliers": outliers,
        "relative_errors": {part: matched[part][0] for part in parts},
        "explained": {part: matched[part][1] for part in parts},
        "traces": shares,
        "trace_stderr": shares,
        "trace_shares": shares,
        "num_classes": C,
        "route": "gram",
        "rtol": 0.1,
        "probes": 8,
        "seconds": 0.5,
        "outlier_source": "ritz",
    }


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products: one thread is as fast, and spares a busy machine
    root = tmp_path_factory.mktemp("spectra")
    made = {}
    ten, three = spiked(500, SPIKES, 0), spiked(500, SPIKES[:3], 1)
    made["ten-plain"] = store(root / "ten-plain.zarr", ten)
    made["three-plain"] = store(root / "three-plain.zarr", three)
    made["ten-deflated"] = store(root / "ten-deflated.zarr", ten, split="test", deflate=10)
    # deflating C = 10 with 3 spikes: 7 deflated eigenvalues sit at the bulk's edge
    made["three-deflated"] = store(root / "three-deflated.zarr", three, split="test", deflate=10)

    g, r = spiked(600, SPIKES, 2), power_law(600, 3)
    parts = {"hessian": g + r, "gradient_covariance": g, "prediction_hessian": r}
    for name, matrix in parts.items():
        deflate = 0 if name == "prediction_hessian" else 10
        made[f"{name}"] = store(
            root / f"test-{name}.zarr",
            matrix,
            split="test",
            component=name,
            per_class=60,
            deflate=deflate,
        )
        # the "log" variant: more steps and no deflation; R with 8 start vectors, so
        # that one quadrature of a 600-dimensional matrix resolves its tail
        made[f"{name}-log"] = store(
            root / f"test-{name}-log.zarr",
            matrix,
            split="test",
            component=name,
            per_class=60,
            steps=128,
            n_vec=8 if name == "prediction_hessian" else 1,
        )

    for split, counts in (
        ("train", {10: 2, 20: 5, "full": 9}),
        ("test", {10: 1, 20: 3, "full": 6}),
    ):
        for seed, (key, count) in enumerate(counts.items()):
            made[f"{split}-{key}"] = store(
                root / f"{split}-{key}.zarr",
                spiked(400, SPIKES[-count:], 10 + seed),
                split=split,
                component="gradient_covariance",
                per_class=key,
                n_samples=600 if key == "full" else None,
            )
    # Fig. 7: a matrix and its two diagonal blocks (the first 200 and the last 200 rows)
    whole = spiked(400, SPIKES[:4], 20)
    made["blocks-whole"] = store(root / "blocks-whole.zarr", whole, per_class="full", n_vec=8)
    made["blocks"] = store_blocks(
        root / "blocks.zarr", {"first": whole[:200, :200], "second": whole[200:, 200:]}
    )
    torch.set_num_threads(threads)
    return made


def store_blocks(path, matrices):
    """A blocks group (as `hspec spectrum --blocks` writes) of the spectra of ``matrices``."""
    attrs = {
        "dataset": "digits",
        "arch": "mlp",
        "split": "train",
        "component": "hessian",
        "n_per_class": "full",
        "n_samples": 1437,
    }
    results = {}
    for name, matrix in matrices.items():
        op = torch.tensor(np.ascontiguousarray(matrix))
        result = hspec.spectral_density(
            lambda v, op=op: op @ v, len(op), dtype=torch.float64, steps=64, n_vec=8
        )
        results[name] = (result, {**attrs, "block": name, "param_names": [f"{name}.weight"]})
    write_blocks(path, results, attrs)
    return str(path)


def execute(name, tmp_path, parameters, notebooks=ROOT / "notebooks", cwd=ROOT):
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(notebooks / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def outputs(tmp_path, number):
    stem = tmp_path / "figures" / f"fig{number}"
    return {"figure": str(stem), "numbers": str(tmp_path / "numbers.json")}


def shown(executed, kind):
    return [
        o["data"][kind]
        for cell in executed.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if kind in o.get("data", {})
    ]


def check_written(stem, numbers_path, executed):
    assert Path(f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert shown(executed, "image/png"), "the executed notebook shows no figure"
    assert any("numbers are what they are" in text for text in shown(executed, "text/markdown")), (
        "no caption shown"
    )
    text = Path(numbers_path).read_text()
    numbers = json.loads(text)
    assert text == json.dumps(numbers, sort_keys=True, indent=2) + "\n"
    return numbers


def check_outputs(tmp_path, number, executed):
    return check_written(tmp_path / "figures" / f"fig{number}", tmp_path / "numbers.json", executed)


def parameters_cell(notebook):
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    return tagged[0]


@pytest.mark.parametrize("fig, name", list(specs.NOTEBOOKS.items()))
def test_notebook_is_committed_clean_with_the_demo_defaults(fig, name, monkeypatch):
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    monkeypatch.chdir(ROOT / "notebooks")  # where Jupyter runs a notebook
    defaults = {}
    exec(parameters_cell(notebook).source, defaults)  # noqa: S102 - the notebook's own cell
    # the one figure -> spectra map, applied to config/demo.yaml (fig7: the example's,
    # config/transformer.yaml), relative to notebooks/
    config = yaml.safe_load((ROOT / specs.DEFAULT_CONFIGS.get(fig, "config/demo.yaml")).read_text())
    results = f"../{config['results']}"
    spec = config["figures"][fig]
    expected = {
        **specs.figure_parameters(fig, spec, results, config.get("blocks")),
        **specs.figure_files(fig, results),
    }
    assert {key: defaults[key] for key in expected} == expected
    paths = specs.spectrum_paths(
        {k: v for k, v in expected.items() if k not in ("figure", "numbers")}
    )
    # what the config writes: its network and dataset, at its sizes
    sizes = {f"n{n}" for n in spec["per_class"]}
    model = f"{results}/spectra/{spec['arch']}/{spec['datasets'][0]}/"
    assert paths and all(p.startswith(model) and p.split("/")[6] in sizes for p in paths), paths
    assert defaults["num_classes"] is None
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "MPLBACKEND" not in cell.source and 'use("Agg")' not in cell.source
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith(f"# {captions.title(fig)}\n")
    assert f'captions.caption("{fig}")' in "".join(c.source for c in notebook.cells)


@pytest.mark.slow  # executes a notebook: a kernel, torch and matplotlib start (~10 s)
@pytest.mark.parametrize(
    "number, name, split",
    [(1, "fig1_train_hessian", "plain"), (2, "fig2_test_hessian", "deflated")],
)
def test_hessian_figures_count_the_planted_outliers(spectra, tmp_path, number, name, split):
    parameters = {
        "spectra": {"ten": spectra[f"ten-{split}"], "three": spectra[f"three-{split}"]},
        **outputs(tmp_path, number),
    }
    if number == 2:  # Fig. 2 compares with the train Hessian of the same model
        parameters["train_spectra"] = {"ten": spectra["ten-plain"], "three": spectra["three-plain"]}
    executed = execute(name, tmp_path, parameters)
    numbers = check_outputs(tmp_path, number, executed)
    ten, three = numbers["spectra"]["ten"], numbers["spectra"]["three"]
    assert (ten["gap_heuristic_outliers"], three["gap_heuristic_outliers"]) == (10, 3)
    assert (ten["gap_heuristic_equals_classes"], three["gap_heuristic_equals_classes"]) == (
        True,
        False,
    )
    assert ten["num_classes"] == 10
    assert np.allclose(sorted(ten["separated_outliers"]), SPIKES, atol=2.0)  # spikes shift
    assert ten["bulk_edges"][0] == pytest.approx(0.0, abs=0.1)
    assert 5.0 < ten["bulk_edges"][1] < 9.0
    assert ten["hvp_count"] > 64 and ten["lambda_max"] > 60
    if split == "deflated":
        assert len(three["deflated_outliers"]) == 10
    printed = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "gap-heuristic outliers: 3 (classes: 10" in printed
    assert numbers["bulk_law"]["ten"]["preferred"] in ("marchenko-pastur", "heavy-tailed")
    if number == 2:  # the same matrices as the train spectra: the ratio of their tops is 1
        assert numbers["magnitude_ratio"]["ten"]["top"]["ratio"] == pytest.approx(1, rel=1e-6)
        assert "test/train magnitude of ten: top eigenvalue 1" in printed


@pytest.mark.slow  # executes a notebook: a kernel, torch and matplotlib start (~10 s)
def test_deflation_figure_aligns_deflated_and_plain_outliers_per_panel(spectra, tmp_path):
    executed = execute(
        "fig3_deflation",
        tmp_path,
        {
            "panels": {
                "ten": {"deflated": spectra["ten-deflated"], "plain": spectra["ten-plain"]},
                "three": {"deflated": spectra["three-deflated"], "plain": spectra["three-plain"]},
            },
            **outputs(tmp_path, 3),
        },
    )
    panels = check_outputs(tmp_path, 3, executed)["panels"]
    ten, three = panels["ten"], panels["three"]
    assert ten["deflated"]["gap_heuristic_outliers"] == ten["plain"]["gap_heuristic_outliers"] == 10
    assert len(ten["alignment"]) == 10
    assert ten["max_relative_difference"] < 1e-4
    assert three["plain"]["gap_heuristic_outliers"] == 3 and len(three["alignment"]) == 3


@pytest.mark.slow  # executes a notebook: a kernel, torch and matplotlib start (~10 s)
def test_components_figure_fits_the_planted_power_law(spectra, tmp_path):
    components = ["hessian", "gradient_covariance", "prediction_hessian"]
    executed = execute(
        "fig4_components",
        tmp_path,
        {
            "panels": {
                "digits": {
                    "spectra": {c: spectra[c] for c in components},
                    "log_spectra": {c: spectra[f"{c}-log"] for c in components},
                }
            },
            "fit_range": None,
            **outputs(tmp_path, 4),
        },
    )
    numbers = check_outputs(tmp_path, 4, executed)["panels"]["digits"]
    assert numbers["spectra"]["hessian"]["gap_heuristic_outliers"] == 10
    assert numbers["spectra"]["gradient_covariance"]["gap_heuristic_outliers"] == 10
    fit = numbers["fit"]
    assert fit["b"] == pytest.approx(TAIL_EXPONENT, abs=0.25)
    assert fit["r2"] > 0.9
    assert 0.03 <= fit["lo"] < fit["hi"] <= 3.0  # inside the planted tail [0.03, 3]
    assert numbers["fit_negative"]["b"] == pytest.approx(TAIL_EXPONENT, abs=0.35)
    assert numbers["asymmetry_component"] == "prediction_hessian"
    assert numbers["asymmetry"] < 0.1  # R is symmetric about 0
    assert numbers["spectra"]["gradient_covariance"]["asymmetry"] > 0.95  # G ⪰ 0
    assert len(numbers["outlier_attribution"]) == 10
    assert all(p["relative_difference"] < 0.1 for p in numbers["outlier_attribution"])
    assert numbers["fit_range_given"] is False
    assert numbers["zoom_reference"] == "prediction_hessian"
    # R's log variant has 8 runs: a band, and the exponent's error across them
    r_log = numbers["log_spectra"]["prediction_hessian"]
    assert r_log["n_vec"] == 8 and r_log["band"]["runs"] == 8
    b = numbers["fit_errors"]["b"]
    assert b["value"] == fit["b"] and len(b["runs"]) == 8 and b["standard_error"] > 0
    assert b["interval_t"][0] < TAIL_EXPONENT < b["interval_t"][1]
    assert (
        numbers["spectra"]["hessian"]["n_vec"] == 1
        and numbers["spectra"]["hessian"]["errors"] is None
    )
    certificates = numbers["spectra"]["hessian"]["outlier_certificates"]
    assert len(certificates) == 10 and all(c["converged"] for c in certificates)
    assert all(c["interval"][0] <= c["value"] <= c["interval"][1] for c in certificates)
    assert numbers["spectra"]["hessian"]["provenance"]["git_commit"] is not None
    text = "".join(shown(executed, "text/markdown"))
    assert "**Band.** The shaded 90% band is as wide as: " in text
    assert "digits/log_spectra/prediction_hessian: 8 runs" in text
    symmetry = numbers["symmetry"]  # R, from its 8 runs
    assert symmetry["n_vec"] == 8 and symmetry["asymmetry"] < 0.1
    assert symmetry["interval"][0] <= symmetry["asymmetry"] <= symmetry["interval"][1]


@pytest.mark.slow  # executes a notebook: a kernel, torch and matplotlib start (~10 s)
def test_sample_size_figure_orders_the_curves_and_counts_outliers(spectra, tmp_path):
    executed = execute(
        "fig5_sample_size",
        tmp_path,
        {
            # string keys, as papermill needs (it stores parameters as sorted JSON)
            "panels": {
                "digits": {
                    "train": {str(key): spectra[f"train-{key}"] for key in (10, 20, "full")},
                    "test": {str(key): spectra[f"test-{key}"] for key in ("full", 10, 20)},
                }
            },
            **outputs(tmp_path, 5),
        },
    )
    numbers = check_outputs(tmp_path, 5, executed)["panels"]["digits"]
    assert numbers["gap_heuristic_by_size"]["train"] == [
        ["10", 10.0, 2],
        ["20", 20.0, 5],
        ["full", 60.0, 9],
    ]
    assert numbers["gap_heuristic_by_size"]["test"] == [
        ["10", 10.0, 1],
        ["20", 20.0, 3],
        ["full", 60.0, 6],
    ]
    assert numbers["spectra"]["test"]["full"]["per_class_value"] == 60.0


@pytest.mark.slow  # executes a notebook: a kernel, torch and matplotlib start (~10 s)
def test_class_structure_figure_counts_the_stored_attribution(tmp_path):
    scales = {"10": 0.5, "20": 0.95, "full": 1.0}  # G1 off by 50 %, 5 %, 0
    panels = {"digits": {}}
    for split in ("train", "test"):
        panels["digits"][split] = {
            key: store(
                tmp_path / f"{split}-{key}.zarr",
                spiked(300, SPIKES, seed),
                split=split,
                component="gradient_covariance",
                per_class=key,
                n_samples=600 if key == "full" else None,
                attribution=planted_attribution(SPIKES, scale),
            )
            for seed, (key, scale) in enumerate(scales.items())
        }
    executed = execute("fig6_class_structure", tmp_path, {"panels": panels, **outputs(tmp_path, 6)})
    numbers = check_outputs(tmp_path, 6, executed)
    assert numbers["figure"] == "fig6"
    panel = numbers["panels"]["digits"]
    for split in ("train", "test"):
        assert panel["explained_by_size"][split] == [
            ["10", 10.0, 0, 10],
            ["20", 20.0, 10, 10],
            ["full", 60.0, 10, 10],
        ]
        medians = [row[2] for row in panel["relative_error_by_size"][split]]
        assert medians == pytest.approx([0.5, 0.05, 0.0], abs=1e-12)
        assert panel["largest"][split] == "full"
        drawn = panel["spectra"][split]["full"]
        assert drawn["class_eigenvalues"]["class_g1"] == pytest.approx(sorted(SPIKES)[::-1])
        assert drawn["outlier_source"] == "ritz"
    printed = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "outliers explained by G1, in order of sample size: [0, 10, 10]" in printed
    assert "shares of tr G: G0 0.100, G1 0.300, G2 0.200, G_within 0.400" in printed


@pytest.mark.slow  # executes a notebook
def test_a_truncated_group_is_named_in_one_clear_error(spectra, tmp_path):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(spectra["ten-plain"], broken)
    shutil.rmtree(broken / "density")  # as if the writer had died midway
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(
            "fig1_train_hessian",
            tmp_path,
            {"spectra": {"digits": str(broken)}, **outputs(tmp_path, 1)},
        )
    assert error.value.ename == "HspecError"
    assert f"{broken}: not a readable spectrum result" in error.value.evalue


@pytest.mark.slow  # executes a notebook
def test_blocks_figure_checks_partition_interlacing_and_traces(spectra, tmp_path):
    executed = execute(
        "fig7_blocks",
        tmp_path,
        {
            "panels": {"digits": {"blocks": spectra["blocks"], "whole": spectra["blocks-whole"]}},
            **outputs(tmp_path, 7),
        },
    )
    panel = check_outputs(tmp_path, 7, executed)["panels"]["digits"]
    assert list(panel["blocks"]) == ["first", "second"]
    assert panel["params_partition"] is True and panel["all_interlaced"] is True
    whole = spiked(400, SPIKES[:4], 20)
    exact = {"first": whole[:200, :200], "second": whole[200:, 200:]}
    for name, block in panel["blocks"].items():
        eigenvalues = np.linalg.eigvalsh(exact[name])
        assert block["n_params"] == 200 and block["param_names"] == [f"{name}.weight"]
        assert block["extremes"][1] == pytest.approx(eigenvalues[-1], rel=1e-6)
        # a stochastic trace estimate (8 start vectors) of tr A_BB: within 20 %
        assert block["trace"] == pytest.approx(np.trace(exact[name]), rel=0.2)
    assert panel["whole"]["extremes"][1] == pytest.approx(np.linalg.eigvalsh(whole)[-1], rel=1e-6)
    assert panel["trace_relative_difference"] < 0.2
    printed = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "blocks partition the parameters: True" in printed


def planted(path, spectra):
    """The synthetic spectrum standing in for the demo's spectrum at ``path``."""
    if "/transformer/" in path:  # fig7's defaults: the example's blocks and whole spectrum
        return spectra["blocks" if path.endswith("-blocks.zarr") else "blocks-whole"]
    n, split, component, variant = re.search(
        r"/n(\w+)/(train|test)-(\w+)-(plain|deflated|log)\.zarr$", path
    ).groups()
    if variant == "log":
        return spectra[f"{component}-log"]
    if component == "hessian":
        return spectra["hessian" if (split, variant) == ("test", "deflated") else f"ten-{variant}"]
    if component == "prediction_hessian" or variant == "deflated":
        return spectra[component]
    return spectra[f"{split}-{'full' if n == '60' else n}"]


@pytest.fixture(scope="module")
def demo_layout(spectra, tmp_path_factory):
    """A copy of the repository's layout (notebooks/, config/demo.yaml) with synthetic
    spectra at exactly the notebooks' default paths, as ``make demo`` would leave them."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "config", root / "config")
    for fig in specs.NOTEBOOKS:
        defaults = specs.notebook_defaults(fig, root / "notebooks")
        for path in specs.spectrum_paths(
            {k: v for k, v in defaults.items() if k not in ("figure", "numbers")}
        ):
            target = root / "notebooks" / path
            if not target.exists():
                shutil.copytree(planted(path, spectra), target)
    return root


@pytest.mark.slow  # executes a notebook
@pytest.mark.parametrize("fig, name", list(specs.NOTEBOOKS.items()))
def test_notebook_runs_as_it_is_on_the_demo_layout(demo_layout, tmp_path, fig, name):
    notebooks = demo_layout / "notebooks"
    executed = execute(name, tmp_path, None, notebooks=notebooks, cwd=notebooks)
    config = yaml.safe_load(
        (demo_layout / specs.DEFAULT_CONFIGS.get(fig, "config/demo.yaml")).read_text()
    )
    figures = demo_layout / config["results"] / "figures" / fig
    numbers = check_written(figures / fig, figures / "numbers.json", executed)
    assert numbers["figure"] == fig


@pytest.mark.slow  # executes a notebook
def test_nbconvert_executes_a_notebook_as_it_is(demo_layout, tmp_path):
    notebook = demo_layout / "notebooks" / "fig2_test_hessian.ipynb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            str(notebook),
            "--output-dir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)
    figures = demo_layout / "results" / "demo" / "figures" / "fig2"
    assert check_written(figures / "fig2", figures / "numbers.json", executed)["spectra"]


@pytest.mark.slow  # executes a notebook
def test_a_missing_spectrum_names_the_snakemake_target(demo_layout, tmp_path):
    missing = (
        demo_layout
        / "results"
        / "demo"
        / "spectra"
        / "mlp"
        / "digits"
        / "n7"
        / ("train-hessian-plain.zarr")
    )
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(
            "fig1_train_hessian",
            tmp_path,
            {"spectra": {"digits": str(missing)}, **outputs(tmp_path, 1)},
        )
    assert error.value.ename == "HspecError"
    assert (
        "no such spectrum; it is written by `snakemake --cores all "
        "results/demo/spectra/mlp/digits/n7/train-hessian-plain.zarr`"
    ) in error.value.evalue
    assert "`make demo`" in error.value.evalue and "delete it" not in error.value.evalue
