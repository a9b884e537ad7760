"""benchmarks/bench.py end to end on a tiny setting: it runs, and what it reports agrees."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_reports_agreeing_products_and_spectra(bench, tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(
        [
            "--models",
            "mlp",
            "--n",
            "64",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--block-repeats",
            "1",
            "--train-epochs",
            "3",
            "--spectrum-models",
            "mlp",
            "--outlier-models",
            "mlp",
            "--precision-models",
            "mlp",
            "--deflate",
            "2",
            "--steps",
            "12",
            "--bound-steps",
            "8",
            "--iterations",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    report = json.loads(out.read_text())
    (model,) = report["models"]
    agreement = model["agreement"]
    assert agreement["H_vs_G_plus_R"] <= 1e-5
    modes = [v for k, v in agreement.items() if k.startswith(("H[", "block10"))]
    assert len(modes) == 2 + 3 and max(modes) <= 1e-5  # every hvp mode, every block
    timings = model["timings"]
    assert {"gradient", "hessian", "hessian_block10[reverse-over-forward]"} <= set(timings)
    assert all(t["median_s"] > 0 for t in timings.values())
    spectrum = model["spectrum"]
    assert spectrum["hvp_count"] == 3 + 8 + 2 * 3 + 12
    assert spectrum["krylov"]["bulk_w1_over_range"] < 0.05
    precision = model["precision"]
    assert precision["float64"]["outliers_max_relative_difference"] == 0
    assert precision["float32"]["outliers_max_relative_difference"] <= 1e-4
    outliers = model["krylov_outliers"]
    assert outliers["reference"]["converged"] and outliers["max_relative_difference"] <= 1e-4
    text = md.read_text()
    assert "| mlp | 301,066 | 64 |" in text and "Precision policy" in text
