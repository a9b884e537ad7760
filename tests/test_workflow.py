"""The Snakemake workflow: the paper's DAG plans offline, lint is clean, and the demo DAG
runs end to end (reduced sizes), is idempotent, and reruns only an edited figure."""

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hspec.figures import captions
from hspec.pipeline.store import read_history, read_spectrum

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def snakemake(*args, cwd=ROOT, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(SNAKEFILE), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def test_the_paper_dag_plans_offline():
    result = snakemake("-n", "--quiet", "rules")
    counts = dict(
        line.split()[:2]
        for line in result.stdout.splitlines()
        if line.split()[:1]
        and line.split()[0] in ("download", "train", "spectrum", "block_spectra", "figure")
    )
    # fig6 reads Fig. 5's spectra (no job of its own but the figure); fig7 (per-block
    # spectra of Fig. 4's model): its blocks group and its train Hessian
    assert counts == {
        "download": "4",
        "train": "152",
        "spectrum": "57",
        "block_spectra": "1",
        "figure": "7",
    }


def test_lint_reports_nothing():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_config_error_is_one_clear_message(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["spectrum"]["steps"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert result.returncode != 0
    assert "1 is less than the minimum of 2" in result.stdout + result.stderr


REDUCED = {
    "results": "results/ci",
    "datasets": {"digits": {"lrs": [0.05], "epochs": 3}},
    "spectrum": {
        "steps": 64,
        "log_steps": 96,
        "bound_steps": 16,
        "iterations": 4,
        "points": 256,
        "checkpoint_interval": 0,
    },
    "figures": {
        "fig1": {"arch": "mlp", "datasets": ["digits"], "per_class": ["full"]},
        "fig2": {"arch": "mlp", "datasets": ["digits"], "per_class": ["full"]},
        "fig3": {"arch": "mlp", "datasets": ["digits"], "per_class": [20]},
        "fig4": {"arch": "mlp", "datasets": ["digits"], "per_class": [20]},
        "fig5": {"arch": "mlp", "datasets": ["digits"], "per_class": [10, 20]},
    },
}


def prepare(work):
    """A working directory with the project's inputs and the reduced demo config."""
    shutil.copy(ROOT / "config.yaml", work)
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    shutil.copytree(ROOT / "config", work / "config")
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    for key, value in REDUCED.items():
        config[key] = (
            value if not isinstance(value, dict) or key != "spectrum" else {**config[key], **value}
        )
    (work / "reduced.yaml").write_text(yaml.safe_dump(config))
    return work


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo DAG with reduced sizes, run in a copy of the project's inputs."""
    work = prepare(tmp_path_factory.mktemp("demo"))
    snakemake("--cores", "2", "--configfile", "reduced.yaml", cwd=work)
    return work, work / "results" / "ci"


@pytest.mark.slow
def test_demo_writes_every_figure(demo):
    _, results = demo
    for fig in ("fig1", "fig2", "fig3", "fig4", "fig5"):
        for ext in ("png", "pdf", "ipynb", "html"):
            path = results / "figures" / fig / f"{fig}.{ext}"
            assert path.stat().st_size > 1000, path
        numbers = json.loads((results / "figures" / fig / "numbers.json").read_text())
        assert numbers


@pytest.mark.slow
def test_demo_spectra_are_complete_zarr_groups(demo):
    _, results = demo
    groups = sorted((results / "spectra").rglob("*.zarr"))
    assert len(groups) == 14
    for group in groups:
        arrays, attrs = read_spectrum(group)
        split, component, variant = group.stem.split("-")
        assert (attrs["split"], attrs["component"]) == (split, component)
        assert attrs["dataset"] == "digits" and attrs["arch"] == "mlp"
        assert len(arrays["outliers"]) == (10 if variant == "deflated" else 0)
        integral = np.trapezoid(arrays["density"], arrays["grid"])
        assert integral + len(arrays["outliers"]) / attrs["n_params"] == pytest.approx(1, abs=0.02)
        assert attrs["hvp_count"] > 0 and attrs["lambda_min"] <= attrs["lambda_max"]
    history, attrs = read_history(results / "runs/mlp/digits/n20/lr0.05/history.zarr")
    assert list(history["epoch"]) == [1, 2, 3] and attrs["lr"] == 0.05


@pytest.mark.slow
def test_the_report_holds_every_figure_with_its_caption_and_numbers(demo):
    """snakemake --report over the demo's outputs: each figure's PNG, its caption (the one
    text of hspec.figures.captions) and its numbers.json."""
    work, _ = demo
    snakemake("--report", "report.html", "--configfile", "reduced.yaml", cwd=work)
    report = (work / "report.html").read_text()
    for fig in ("fig1", "fig2", "fig3", "fig4", "fig5"):
        assert captions.title(fig) in report, fig
        assert f"{fig}.png" in report, fig
    assert report.count("numbers.json") >= 5


@pytest.mark.slow
def test_a_second_run_has_nothing_to_do(demo):
    work, _ = demo
    result = snakemake("-n", "--configfile", "reduced.yaml", cwd=work)
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_editing_a_notebook_reruns_only_its_figure(demo):
    work, _ = demo
    notebook = work / "notebooks" / "fig3_deflation.ipynb"
    content = json.loads(notebook.read_text())
    content["cells"].append(
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": ["print('edited')"],
        }
    )
    notebook.write_text(json.dumps(content))
    result = snakemake("-n", "--quiet", "rules", "--configfile", "reduced.yaml", cwd=work)
    jobs = [line.split() for line in result.stdout.splitlines()]
    counts = {row[0]: row[1] for row in jobs if len(row) == 2 and row[1].isdigit()}
    assert counts == {"figure": "1", "all": "1", "total": "2"}, result.stdout


TARGETS = [
    f"results/ci/spectra/mlp/digits/n20/train-hessian-{variant}.zarr"
    for variant in ("deflated", "plain")
]  # download → subsample → train → spectra


def kill_when(work, pattern, timeout=300):
    """Start the reduced demo and SIGKILL snakemake and all its jobs once a file
    matching ``pattern`` exists under results/ (a job is then midway). A killed
    snakemake leaves its lock behind: unlock first, as a user would."""
    snakemake("--unlock", "--configfile", "reduced.yaml", cwd=work)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    log = open(work / "killed-run.log", "w")
    process = subprocess.Popen(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(SNAKEFILE),
            *TARGETS,
            "--cores",
            "2",
            "--configfile",
            "reduced.yaml",
            "--rerun-incomplete",
        ],
        cwd=work,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    try:
        while not any(
            fnmatch.filter(files, pattern) for _, _, files in os.walk(work / "results")
        ):  # ignores vanishing dirs
            assert process.poll() is None, (
                f"the run ended before {pattern} appeared:\n"
                f"{(work / 'killed-run.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_results(demo, tmp_path):
    """kill -9 during training, rerun, kill -9 during a spectrum, rerun (Fig. 3's part of
    the DAG): the final Zarr groups equal those of the uninterrupted run, and no partial
    group or checkpoint survives."""
    _, reference = demo
    work = prepare(tmp_path)
    kill_when(work, "checkpoint.pt")
    kill_when(work, "*.ckpt")
    snakemake("--unlock", "--configfile", "reduced.yaml", cwd=work)
    snakemake(
        *TARGETS, "--cores", "2", "--configfile", "reduced.yaml", "--rerun-incomplete", cwd=work
    )
    results = work / "results" / "ci"
    groups = sorted(p.relative_to(results) for p in (results / "spectra").rglob("*.zarr"))
    assert groups == [Path(target).relative_to("results/ci") for target in TARGETS]
    for group in groups:
        got, _ = read_spectrum(results / group)
        expected, _ = read_spectrum(reference / group)
        for name in ("grid", "density", "outliers", "nodes", "weights"):
            assert np.array_equal(got[name], expected[name]), (group, name)
    assert not list(results.rglob("*.tmp")) and not list(results.rglob("*.ckpt"))
