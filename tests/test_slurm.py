"""The workflow on a real Slurm, through profiles/slurm (snakemake-executor-plugin-slurm).

A one-machine cluster (Debian's slurm-wlm and munge, installed with apt-get when missing;
tests/slurm/cluster.py) runs a reduced demo DAG for Fig. 5 (download -> 2 subsets ->
2 trainings -> 2 selections -> 4 spectra -> the figure notebook), every rule a Slurm
job, ``train`` with ``gpu=1`` so that GPU requests are scheduled (on placeholder GPUs:
the config's device stays cpu). Checked: Snakemake succeeds, the figure files and the
Zarr spectra exist and are complete, and Slurm ran each job (slurmctld keeps finished
jobs for MinJobAge), the train jobs, and only they, with one allocated GPU each.

Skipped, with the reason, where Slurm cannot be installed or started (not root, no
apt-get, no network to the mirrors, a foreign /etc/slurm/slurm.conf, ...).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "hspec_test_slurm_cluster", ROOT / "tests" / "slurm" / "cluster.py"
)
cluster_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_module)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The target: Fig. 5 alone needs every rule (download, subsample, train, select,
# spectrum, figure) in 12 Slurm jobs, 7 rounds of at most 2 jobs on a 2-core machine;
# each job starts Snakemake twice (sbatch, then srun), so all five figures (28 jobs)
# would take well over the few minutes this test may take.
FIGURES = ("fig5",)
RULES = {"download": 1, "subsample": 2, "train": 2, "select": 2, "spectrum": 4, "figure": 1}
SPECTRA = [
    f"n{n}/{split}-gradient_covariance-plain" for n in (10, 20) for split in ("train", "test")
]
FIGURE_FILES = ("png", "pdf", "html", "ipynb")
# seconds for the Snakemake run: 260-290 s measured on 2 cores shared with other work
# (load 2.5-3.5); each round of jobs is seen finished at the executor's next status poll,
# 2, 14, 36, 68 s after the last finish (the plugin adds 10 s per poll without one)
TIMEOUT = 420


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cluster = cluster_module.Cluster(gpus=2)
    try:
        cluster.start()
    except cluster_module.Unavailable as reason:
        pytest.skip(f"no Slurm cluster here: {reason}")
    try:
        yield cluster
    finally:
        cluster.stop()


def reduced_demo(tmp_path: Path) -> Path:
    """config/demo.yaml with results in tmp_path, one lr, 2 epochs, a few Lanczos steps,
    Fig. 5 on 10 and 20 examples per class."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    for dataset in config["datasets"].values():
        dataset.update(lrs=dataset["lrs"][:1], epochs=2)
    config["spectrum"].update(steps=16, log_steps=32, bound_steps=16, iterations=4, points=128)
    # distinctive requests, checked on the Slurm jobs
    config["training"].update(threads=1, mem_mb=1100, runtime=7)
    config["spectrum"].update(threads=1, mem_mb=1200, runtime=8)
    config["figures"]["fig5"]["per_class"] = [10, 20]
    path = tmp_path / "demo-slurm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def slurm_jobs() -> list[dict[str, str]]:
    """Every job slurmctld still knows (finished ones for MinJobAge seconds)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True
    ).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "JobId" in fields:
            jobs.append(fields)
    return jobs


def failure_report(run: subprocess.CompletedProcess | None, tmp_path: Path, cluster) -> str:
    parts = []
    if run is not None:
        parts.append("snakemake output (tail):\n" + (run.stdout or "")[-6000:])
    for log in sorted((tmp_path / "results" / "logs").rglob("*.log"))[:40]:
        parts.append(f"{log.relative_to(tmp_path)}:\n{log.read_text()[-800:]}")
    for log in sorted((tmp_path / "slurm_logs").rglob("*.log"))[:10]:
        parts.append(f"{log.relative_to(tmp_path)}:\n{log.read_text()[-1500:]}")
    parts.append("slurmctld: " + cluster.logs("slurmctld")[-1500:])
    parts.append("slurmd: " + cluster.logs("slurmd")[-1500:])
    return "\n\n".join(parts)


def test_demo_dag_on_slurm(slurm, tmp_path):
    from hspec.pipeline.store import read_spectrum

    config = reduced_demo(tmp_path)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SBATCH_", "SRUN_"))
    }
    # jobs inherit this environment (sbatch --export=ALL): the rules call `hspec`,
    # `papermill` and `jupyter` from the project's environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--workflow-profile",
        "profiles/slurm",
        "--configfile",
        str(config),
        # no accounting database on this cluster: sacct knows no job (see the profile)
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--seconds-between-status-checks",
        "2",
        "--slurm-logdir",
        str(tmp_path / "slurm_logs"),
        "--set-resources",
        "train:gpu=1",
        "--jobs",
        "8",
        "--latency-wait",
        "10",
    ] + [
        str(tmp_path / "results" / "figures" / fig / f"{fig}.{ext}")
        for fig in FIGURES
        for ext in FIGURE_FILES
    ]
    started = time.monotonic()
    run = None
    try:
        run = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or b""
        run = subprocess.CompletedProcess(
            command, -1, output.decode(errors="replace") if isinstance(output, bytes) else output
        )
        pytest.fail(
            f"snakemake on Slurm took over {TIMEOUT} s\n" + failure_report(run, tmp_path, slurm)
        )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, (
        f"snakemake on Slurm failed after {elapsed:.0f} s\n" + failure_report(run, tmp_path, slurm)
    )

    results = tmp_path / "results"
    for fig in FIGURES:
        for name in [f"{fig}.{ext}" for ext in FIGURE_FILES] + ["numbers.json"]:
            path = results / "figures" / fig / name
            assert path.is_file() and path.stat().st_size > 0, path
    for spectrum in SPECTRA:
        arrays, attrs = read_spectrum(results / "spectra" / "mlp" / "digits" / f"{spectrum}.zarr")
        assert arrays["density"].size > 0 and attrs["dataset"] == "digits", spectrum
    assert sorted(
        p.relative_to(results / "spectra" / "mlp" / "digits").as_posix()
        for p in (results / "spectra").rglob("*.zarr")
    ) == sorted(f"{s}.zarr" for s in SPECTRA)

    # Slurm ran every job of this run (job name = the run's ID): one per rule instance,
    # all COMPLETED, each train job with one GPU requested and allocated (the prolog
    # recorded its index), no other job with a GPU
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout).group(1)
    jobs = [job for job in slurm_jobs() if job.get("JobName") == run_id]
    gpus = slurm.allocated_gpus()
    ran = {}
    for job in jobs:
        rule = job["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        ran[rule] = ran.get(rule, 0) + 1
        assert job["JobState"] == "COMPLETED", job
        assert job["WorkDir"] == str(ROOT), job
        assert job["JobId"] in gpus, f"the prolog did not run for job {job['JobId']}"
        if rule in ("train", "spectrum"):  # threads, mem_mb, runtime from the config
            want = {"train": ("1", "1100M", "00:07:00"), "spectrum": ("1", "1200M", "00:08:00")}[
                rule
            ]
            assert (job["CPUs/Task"], job["MinMemoryNode"], job["TimeLimit"]) == want, job
        if rule == "train":
            assert job.get("TresPerJob") == "gres:gpu:1", job
            assert gpus[job["JobId"]] in [str(i) for i in range(slurm.gpus)], gpus
        else:
            assert "TresPerJob" not in job and gpus[job["JobId"]] == "", (job, gpus)
    assert ran == RULES, (ran, run.stdout[-3000:])
    print(f"\nsnakemake on Slurm: {len(jobs)} jobs in {elapsed:.0f} s")
