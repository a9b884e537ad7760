"""The ``hspec check`` job: a small trained model's spectrum by hspec against the exact one.

Orchestration only: model and split as ``hspec spectrum`` loads them
(:func:`hspec.pipeline.spectrum_job.load`), the comparison by
:func:`hspec.curvature.check.check`, a short table on stdout and, with ``--json FILE``,
the whole report written atomically. A failed verdict is not an error: the command
prints it and exits with status 1.
"""

from __future__ import annotations

import sys

from hspec.atomic import write_json
from hspec.curvature.check import check
from hspec.pipeline import devices, spectrum_job


def run(args) -> int:
    """One ``hspec check``: load, :func:`~hspec.curvature.check.check`, print, write
    ``--json``; returns 0 if the verdict passed, else 1."""
    device = devices.resolve(args.device)
    model, _, inputs, targets, _ = spectrum_job.load(args, device)
    report = check(
        model,
        (inputs, targets),
        args.component,
        max_params=args.max_params,
        batch_size=args.batch_size,
        device=device,
        progress=not args.quiet and sys.stderr.isatty(),
        **{name: getattr(args, name) for name in spectrum_job.ESTIMATE_OPTIONS},
    )
    report = {"model": str(args.model), "dataset": args.dataset, "split": args.split, **report}
    if args.json is not None:
        write_json(args.json, report)
    print("\n".join(table(report)))
    return 0 if report["passed"] else 1


def table(report: dict) -> list[str]:
    """The report as a few lines of text: outliers, density distances, the verdict."""
    limits = report["tolerances"]
    lines = [
        f"{report['model']}: {report['component']} on {report['dataset']} {report['split']}, "
        f"{report['n_params']} parameters, exact eigenvalues vs hspec"
    ]
    if report["outliers"]:
        lines.append(f"  {'outlier':>7} {'hspec':>14} {'exact':>14} {'rel. error':>10}  interval")
    for index, row in enumerate(report["outliers"]):
        holds = "holds exact" if row["interval_holds_exact"] else "MISSES exact"
        lines.append(
            f"  {index:>7} {row['value']:>14.8g} {row['exact']:>14.8g} "
            f"{row['relative_error']:>10.2e}  ±{(row['interval'][1] - row['interval'][0]) / 2:.2g} "
            f"{holds}"
        )
    density = report["density"]
    lines.append(
        f"  density: W1/width {density['w1']:.3g} (≤ {limits['density_w1']:g}), "
        f"L1 {density['l1']:.3g} (≤ {limits['density_l1']:g}), "
        f"max relative {density['max_relative']:.3g}"
    )
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"  verdict: {verdict}")
    return lines
