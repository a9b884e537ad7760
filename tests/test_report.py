"""The Snakemake report: a figure's PNG with its caption (hspec.figures.captions) and its
numbers.json, from a run of the figure rule alone on planted spectra, under a results
folder whose name holds a space (every shell value of the rule is quoted)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hspec
from hspec.figures import captions, specs
from hspec.pipeline.store import write_spectrum

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = "results/demo run"  # a space: the shell commands must quote it
SPIKES = [20.0 + 5 * i for i in range(10)]  # 10 = C (digits)


def plant(path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 100)) / 10
    u = np.linalg.qr(rng.standard_normal((300, 10)))[0]
    matrix = torch.tensor(x @ x.T + u @ np.diag(SPIKES) @ u.T)
    result = hspec.spectral_density(
        lambda v: matrix @ v, 300, dtype=torch.float64, steps=64, iterations=64
    )
    write_spectrum(
        path,
        result,
        {
            "dataset": "digits",
            "arch": "mlp",
            "split": "train",
            "component": "hessian",
            "n_per_class": "full",
            "n_samples": 1437,
        },
    )


def snakemake(cwd, *args):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(cwd / "workflow" / "Snakefile"),
            *args,
            "--configfile",
            "config/demo.yaml",
            "--config",
            f"results={RESULTS}",
        ],  # last:
        # --config takes every word after it
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # runs one figure notebook through Snakemake (~1 min)
def test_report_shows_the_figure_with_its_caption_and_numbers(tmp_path):
    for name in ("workflow", "notebooks", "config"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    # every figure's spectra must exist for the report's DAG; fig1's is the planted one
    paths = [
        path
        for fig, spec in demo["figures"].items()
        for path in specs.spectrum_paths(specs.figure_parameters(fig, spec, RESULTS))
    ]
    plant(tmp_path / paths[0])
    for path in set(paths) - {paths[0]}:
        shutil.copytree(tmp_path / paths[0], tmp_path / path)
    png = f"{RESULTS}/figures/fig1/fig1.png"
    # the spectrum stands in for the demo's: only the figure rule may run
    snakemake(tmp_path, "--cores", "1", "--allowed-rules", "figure", png)
    numbers = json.loads((tmp_path / RESULTS / "figures/fig1/numbers.json").read_text())
    assert numbers["spectra"]["digits"]["outliers_found"] == 10
    assert (tmp_path / RESULTS / "figures/fig1/fig1.html").stat().st_size > 0
    snakemake(tmp_path, "--report", "report.html", png)
    report = (tmp_path / "report.html").read_text()
    assert captions.title("fig1") in report
    assert "numbers are what they are" in report
    assert "fig1.png" in report and "numbers.json" in report
