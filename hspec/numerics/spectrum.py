"""One entry point: the spectral density of a symmetric operator (paper Section 3.2).

``spectral_density`` runs the paper's pipeline on any symmetric operator given as a
callable on flat tensors:

1. NORMALIZATION(A, M0 = ``bound_steps``, κ = ``margin``) — Alg. 4;
2. optionally LOWRANKDEFLATION(A, C = ``deflate``, T = ``iterations``) — Alg. 5 with a
   Rayleigh–Ritz step — after which the bulk is estimated on P A P, P = I − Q Qᵀ;
3. LANCZOSAPPROXSPEC(M = ``steps``, K = ``points``, n_vec) — Alg. 3 — or KPM.

After deflation the bulk interval for the smoothing comes from Alg. 4 applied to the
bulk's own Lanczos runs (no extra products), so the bulk is resolved on its own range;
KPM needs the interval before its moments, so it runs NORMALIZATION on P A P.

The bulk density integrates to (dim − C)/dim, so ∫ density dt + len(outliers)/dim = 1.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from hspec.errors import HspecError
from hspec.numerics.checkpoint import SpectrumCheckpoint
from hspec.numerics.deflation import low_rank_deflation
from hspec.numerics.density import lanczos_approx_spec, log_density, quadrature
from hspec.numerics.kpm import kpm_density, kpm_moments
from hspec.numerics.lanczos import LanczosRun, fast_lanczos
from hspec.numerics.linear_operator import Deflated, LinearOperator, Normalized
from hspec.numerics.normalization import Normalization, bounds_from_runs, normalization
from hspec.numerics.outliers import top_eigenpairs

METHODS = ("lanczos", "kpm")
DEFLATIONS = ("subspace", "krylov")


@dataclass
class SpectralDensity:
    """An estimated spectrum: a smoothed bulk density plus deflated outliers.

    Attributes:
        grid, density: the bulk density on K points (denormalized axis).
        outliers: deflated eigenvalues, descending, signed (empty without deflation).
        nodes, weights: Ritz values and τ²·(dim − C)/(dim·n_vec) of every Lanczos run
            (empty for KPM): the bulk's quadrature, re-smoothable without new products.
        moments: Chebyshev moments (KPM only).
        lambda_min, lambda_max: NORMALIZATION's estimate of the full spectrum's range.
        bulk: the interval [c − d, c + d] the density was smoothed on.
        hvp_count: operator products used, the symmetry probe included (the
            checkpoint's identity probe is not counted).
        dim, seconds, settings: size, wall time and every setting used.
    """

    grid: np.ndarray
    density: np.ndarray
    outliers: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    moments: np.ndarray
    lambda_min: float
    lambda_max: float
    bulk: Normalization
    hvp_count: int
    dim: int
    seconds: float
    settings: dict = field(default_factory=dict)

    def atoms(self) -> tuple[np.ndarray, np.ndarray]:
        """The estimated spectral distribution as point masses: outliers (1/dim each)
        and the bulk's quadrature nodes (Lanczos only)."""
        return (
            np.concatenate([self.outliers, self.nodes]),
            np.concatenate([np.full(len(self.outliers), 1 / self.dim), self.weights]),
        )

    def resmooth(self, k: float = 1.25, points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Alg. 3's smoothing of the stored quadrature with another constant k."""
        return lanczos_approx_spec(
            self.nodes,
            self.weights,
            self.bulk,
            steps=self.settings["steps"],
            k=k,
            points=points or len(self.grid),
        )

    def log_density(
        self, sign: int = 1, points: int = 1024, decades: float = 8.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Density of log10|λ| over the eigenvalues of one sign, outliers included."""
        nodes, masses = self.atoms()
        return log_density(
            nodes,
            masses,
            sign=sign,
            points=points,
            decades=decades,
            steps=self.settings["steps"],
            k=self.settings["k"],
        )


def _no_checkpoint(stage, compute, encode=None, decode=None):
    return compute(None, None)


def _start(op, generator: torch.Generator, project):
    start = op.randn(generator=generator)
    return start if project is None else project(start)


def _encode_norm(norm: Normalization) -> torch.Tensor:
    return torch.tensor([norm.lambda_min, norm.lambda_max, norm.c, norm.d], dtype=torch.float64)


def _decode_norm(values: torch.Tensor) -> Normalization:
    return Normalization(*values.tolist())


def _encode_run(run: LanczosRun) -> dict:
    return {"alpha": torch.from_numpy(run.alpha), "beta": torch.from_numpy(run.beta)}


def _decode_run(saved: dict) -> LanczosRun:
    return LanczosRun(saved["alpha"].cpu().numpy(), saved["beta"].cpu().numpy())


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise HspecError(f"{name}: must be an integer ≥ {low}, got {value!r}")


def spectral_density(
    matvec,
    dim: int | None = None,
    *,
    method: str = "lanczos",
    deflate: int = 0,
    steps: int = 256,
    bound_steps: int = 64,
    margin: float = 0.05,
    points: int = 1024,
    n_vec: int = 1,
    iterations: int = 256,
    deflation: str = "subspace",
    deflation_tol: float = 1e-6,
    k: float = 1.25,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    check_symmetric: bool = True,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_interval: float = 60.0,
    checkpoint_key: Mapping | None = None,
) -> SpectralDensity:
    """Estimate the spectral density of a symmetric operator (paper Section 3.2).

    Args:
        matvec: a callable v ↦ A v on flat tensors (then ``dim`` is required), or an
            operator with ``.matvec`` and ``.dim`` such as ``hspec.curvature_operator``.
        method: ``"lanczos"`` (Alg. 3, the paper's choice) or ``"kpm"``.
        deflate: number C of outliers removed first by Alg. 5 (0: none).
        steps: Lanczos steps M (KPM: products per vector, giving 2M moments).
        bound_steps, margin: M0 and κ of NORMALIZATION (Alg. 4).
        points: grid size K. n_vec: number of random start vectors.
        deflation: how the outliers are found: ``"subspace"`` (the paper's Alg. 5,
            ``iterations`` × ``deflate`` products) or ``"krylov"`` (thick-restart
            Lanczos, :func:`hspec.numerics.outliers.top_eigenpairs`, to relative accuracy
            ``deflation_tol``: a few dozen products for C = 10).
        iterations: subspace iterations T of Alg. 5. k: smoothing constant (Alg. 3).
        seed: seeds every random vector (drawn on the CPU, so devices agree).
        dtype, device: of the vectors (default: the operator's, else float32 on CPU).
        check_symmetric: probe symmetry and determinism first (three products).
        checkpoint: a file where the computation saves its state (every
            ``checkpoint_interval`` seconds and after each stage) and from which a rerun
            with the same settings resumes (the Lanczos part of ``method="kpm"`` too, not
            its Chebyshev moments); delete it once the result is stored. It resumes only
            the identical computation: same settings, ``dim``, ``checkpoint_key`` and one
            probe product A v (one extra, uncounted product); otherwise it is discarded
            with a logged warning and the computation starts over.
        checkpoint_key: the caller's identity of the computation, stored in the
            checkpoint and compared on resume (e.g. the model file's hash, dataset,
            split, component); JSON-like values.
    """
    start_time = time.perf_counter()
    op = LinearOperator.wrap(matvec, dim, dtype=dtype, device=device)
    if method not in METHODS:
        raise HspecError(f"method: must be one of {METHODS}, got {method!r}")
    if deflation not in DEFLATIONS:
        raise HspecError(f"deflation: must be one of {DEFLATIONS}, got {deflation!r}")
    for name, value, low in (
        ("steps", steps, 2),
        ("bound_steps", bound_steps, 2),
        ("points", points, 2),
        ("n_vec", n_vec, 1),
        ("iterations", iterations, 1),
        ("deflate", deflate, 0),
        ("seed", seed, 0),
    ):
        _check_int(name, value, low)
    if deflate >= op.dim:
        raise HspecError(f"deflate: must be smaller than dim = {op.dim}, got {deflate}")
    if not _is_real(margin) or not margin >= 0:
        raise HspecError(f"margin: must be a number ≥ 0, got {margin!r}")
    if not _is_real(k) or not k > 1:
        raise HspecError(f"k: the smoothing constant must be a number > 1, got {k!r}")

    settings = dict(
        method=method,
        deflate=deflate,
        steps=steps,
        bound_steps=bound_steps,
        margin=margin,
        points=points,
        n_vec=n_vec,
        iterations=iterations,
        deflation=deflation,
        deflation_tol=deflation_tol,
        k=k,
        seed=seed,
        dtype=str(op.dtype).removeprefix("torch."),
    )
    generator = torch.Generator().manual_seed(seed)
    stage = _no_checkpoint
    if checkpoint is not None:
        saved = SpectrumCheckpoint(
            checkpoint, settings, op, key=checkpoint_key, interval=checkpoint_interval
        )
        op.hvp_count = saved.restore(generator)
        stage = saved.stage_runner(generator, op)

    if check_symmetric:
        stage("probe", lambda resume, snapshot: op.check_symmetric(generator) or True)
    full = stage(
        "normalization",
        lambda resume, snapshot: normalization(
            op,
            bound_steps,
            margin,
            generator=generator,
            progress=progress,
            resume=resume,
            snapshot=snapshot,
        ),
        encode=_encode_norm,
        decode=_decode_norm,
    )

    outliers, target, project = np.empty(0), op, None
    if deflate:

        def outlier_search(resume, snapshot):
            if deflation == "krylov":
                return top_eigenpairs(
                    op, deflate, tol=deflation_tol, generator=generator, progress=progress
                )[:2]
            return low_rank_deflation(
                op,
                deflate,
                iterations,
                generator=generator,
                progress=progress,
                resume=resume,
                snapshot=snapshot,
            )

        found = stage(
            "deflation",
            outlier_search,
            encode=lambda r: {"values": torch.from_numpy(r[0]), "basis": r[1]},
            decode=lambda d: (d["values"].cpu().numpy(), d["basis"]),
        )
        outliers, basis = found
        target = Deflated(op, basis)
        project = target.project
    share = (op.dim - deflate) / op.dim

    nodes = weights = moments = np.empty(0)
    if method == "lanczos":

        def lanczos(resume, snapshot):
            start = None if resume is not None else _start(target, generator, project)
            return fast_lanczos(
                target,
                steps,
                start=start,
                progress=progress,
                resume=resume,
                snapshot=snapshot,
                desc="Lanczos",
            )

        runs = [
            stage(f"lanczos{index}", lanczos, encode=_encode_run, decode=_decode_run)
            for index in range(n_vec)
        ]
        bulk = bounds_from_runs(runs, margin) if deflate else full
        nodes, weights = quadrature(runs)
        weights = weights * share
        grid, density = lanczos_approx_spec(nodes, weights, bulk, steps=steps, points=points, k=k)
    else:
        bulk = (
            full
            if not deflate
            else stage(
                "bulk_normalization",
                lambda resume, snapshot: normalization(
                    target,
                    bound_steps,
                    margin,
                    generator=generator,
                    progress=progress,
                    start=None if resume is not None else _start(target, generator, project),
                    resume=resume,
                    snapshot=snapshot,
                ),
                encode=_encode_norm,
                decode=_decode_norm,
            )
        )
        moments = kpm_moments(
            Normalized(target, bulk.c, bulk.d),
            steps,
            n_vec,
            generator=generator,
            progress=progress,
            start_projection=project,
        )
        t = np.linspace(-1.0, 1.0, points)
        grid, density = bulk.to_original(t), kpm_density(moments, t) * share / bulk.d

    return SpectralDensity(
        grid=grid,
        density=density,
        outliers=outliers,
        nodes=nodes,
        weights=weights,
        moments=moments,
        lambda_min=full.lambda_min,
        lambda_max=full.lambda_max,
        bulk=bulk,
        hvp_count=op.hvp_count,
        dim=op.dim,
        seconds=time.perf_counter() - start_time,
        settings=settings,
    )
