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

Every number comes with its error and its origin: the n_vec Lanczos runs are kept apart
(``runs``), so :meth:`SpectralDensity.band` gives a pointwise confidence band of the
density; each outlier comes with its true residual, the interval it proves and a
convergence flag (:mod:`hspec.numerics.certify`); ``provenance`` records the code, the
software, the machine and the time (:mod:`hspec.numerics.provenance`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from hspec.errors import HspecError
from hspec.numerics.certify import converged, error_bounds, ritz_residuals
from hspec.numerics.checkpoint import SpectrumCheckpoint
from hspec.numerics.deflation import low_rank_deflation
from hspec.numerics.density import (
    lanczos_approx_spec,
    log_density,
    quadrature,
    run_index,
    smoothing_width,
)
from hspec.numerics.ghosts import density_change, ghosts
from hspec.numerics.kpm import kpm_density, kpm_moments
from hspec.numerics.lanczos import REORTH, LanczosRun, fast_lanczos
from hspec.numerics.linear_operator import Deflated, LinearOperator, Normalized
from hspec.numerics.normalization import Normalization, bounds_from_runs, normalization
from hspec.numerics.outliers import top_eigenpairs
from hspec.numerics.provenance import environment, utc_now

METHODS = ("lanczos", "kpm")
DEFLATIONS = ("subspace", "krylov")
BAND_METHODS = ("t", "bootstrap")


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
            checkpoint's identity probe is not counted); with ``deflation="krylov"`` it
            includes the C products of the outliers' residuals (subspace deflation gets
            them from its last iteration's product, for free).
        dim, seconds, settings: size, wall time (every part of a resumed run included)
            and every setting used.
        runs: the Lanczos run (0 … n_vec − 1) of each node (empty for KPM).
        residuals: the true residual ‖A x − θ x‖ of each outlier (unit Ritz vector x), in
            the order of ``outliers``: [θ − r, θ + r] holds an eigenvalue of A.
        error_bounds: min(r, r²/δ) with the estimated gap δ (Kato–Temple), floored at
            rounding (:func:`hspec.numerics.certify.error_bounds`); ≤ residuals.
        converged: False for an outlier whose error bound exceeds
            ``deflation_tol``·max|θ| (:mod:`hspec.numerics.certify`).
        vectors: the outliers' orthonormal eigenvectors (dim, C), with
            ``keep_vectors=True`` only; never stored in a Zarr group.
        provenance: code, software, device, host, start and end time (UTC ISO) and total
            seconds (:func:`hspec.numerics.provenance.environment`).
        ghosts, ghost_runs: the Ritz values of the Lanczos runs that stand for no distinct
            eigenvalue (Cullum–Willoughby spurious values and extra copies of converged
            ones, :func:`hspec.numerics.ghosts.ghosts`) and the run of each; with
            ``reorth="none"`` a run past convergence has them, with ``"full"`` none.
        convergence_l1, convergence_w1: per run, how much its density changed between
            M/2 and M steps (:func:`hspec.numerics.ghosts.density_change`: L1 distance of
            the smoothed densities on the normalized axis, in [0, 2]; Wasserstein-1 of the
            quadratures on that axis, of width 2).
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
    runs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    residuals: np.ndarray = field(default_factory=lambda: np.empty(0))
    error_bounds: np.ndarray = field(default_factory=lambda: np.empty(0))
    converged: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    vectors: Tensor | None = None
    provenance: dict = field(default_factory=dict)
    ghosts: np.ndarray = field(default_factory=lambda: np.empty(0))
    ghost_runs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    convergence_l1: np.ndarray = field(default_factory=lambda: np.empty(0))
    convergence_w1: np.ndarray = field(default_factory=lambda: np.empty(0))

    def ghost_counts(self) -> np.ndarray:
        """The number of ghosts (``ghosts``) of each Lanczos run (n_vec,)."""
        return np.bincount(self.ghost_runs, minlength=len(self.convergence_l1))

    def convergence(self) -> dict:
        """The convergence numbers over the runs: mean and max of ``convergence_l1`` and
        ``convergence_w1``, and the ghosts per run (empty dict for KPM)."""
        if not len(self.convergence_l1):
            return {}
        return {
            "l1_mean": float(np.mean(self.convergence_l1)),
            "l1_max": float(np.max(self.convergence_l1)),
            "w1_mean": float(np.mean(self.convergence_w1)),
            "w1_max": float(np.max(self.convergence_w1)),
            "ghosts_per_run": self.ghost_counts().tolist(),
            "method": "density of T_M vs T_{M/2} of each run, Alg. 3 kernel of M steps",
        }

    def outlier_intervals(self) -> tuple[np.ndarray, np.ndarray]:
        """(θ − r, θ + r) per outlier: each interval holds an eigenvalue of A."""
        return self.outliers - self.residuals, self.outliers + self.residuals

    def run_densities(self) -> np.ndarray:
        """(n_vec, K): each Lanczos run's density alone, smoothed by Alg. 3's kernel on
        ``grid`` (same width); their mean is ``density``."""
        if not len(self.nodes):
            raise HspecError("band: needs the Lanczos runs; a KPM result keeps none")
        if len(self.runs) != len(self.nodes):
            raise HspecError("band: this result has no run index (stored before runs were kept)")
        n_vec = int(self.runs.max()) + 1
        return np.stack(
            [
                lanczos_approx_spec(
                    self.nodes[self.runs == run],
                    self.weights[self.runs == run] * n_vec,
                    self.bulk,
                    steps=self.settings["steps"],
                    k=self.settings["k"],
                    points=len(self.grid),
                )[1]
                for run in range(n_vec)
            ]
        )

    def band(
        self, level: float = 0.9, method: str = "t", resamples: int = 2000, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A pointwise ``level`` confidence band of the smoothed density: (grid, lower, upper).

        The n_vec runs are independent estimates of the smoothed density (each smoothed
        alone, :meth:`run_densities`); ``density`` is their mean; the band is
        :func:`pointwise_band` of the runs' densities. Its width shrinks like 1/√n_vec.
        Needs n_vec ≥ 2.
        """
        return self.grid, *pointwise_band(self.run_densities(), level, method, resamples, seed)

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


def pointwise_band(
    curves, level: float = 0.9, method: str = "t", resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper): a pointwise ``level`` confidence interval of the mean of n
    independent estimates ``curves`` (n, K) of one curve (or, K = 1, of one number).

    ``method="t"``: mean ± t_{(1+level)/2, n−1} · s/√n, s the standard deviation across
    the n estimates at each point (Student's t, n − 1 degrees of freedom);
    ``"bootstrap"``: the percentile interval of the mean over ``resamples`` resamplings of
    the estimates with replacement (seeded by ``seed``). Not clipped. Needs n ≥ 2.
    """
    if not _is_real(level) or not 0 < level < 1:
        raise HspecError(f"level: must be a number in (0, 1), got {level!r}")
    if method not in BAND_METHODS:
        raise HspecError(f"method: must be one of {BAND_METHODS}, got {method!r}")
    curves = np.asarray(curves, dtype=float)
    n_vec = len(curves)
    if n_vec < 2:
        raise HspecError(
            f"band: needs n_vec ≥ 2 Lanczos runs to measure their spread, this result has {n_vec}"
        )
    if method == "t":
        import scipy.stats  # here, not at import: 1.2 s of every hspec command's start

        half = scipy.stats.t.ppf((1 + level) / 2, n_vec - 1) * (
            curves.std(axis=0, ddof=1) / math.sqrt(n_vec)
        )
        mean = curves.mean(axis=0)
        return mean - half, mean + half
    _check_int("resamples", resamples, 1)
    rng = np.random.default_rng(seed)
    shares = rng.multinomial(n_vec, np.full(n_vec, 1 / n_vec), size=resamples) / n_vec
    lower, upper = np.quantile(shares @ curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lower, upper


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


def _diagnose(runs: list[LanczosRun], bulk: Normalization, sigma: float, op):
    """Ghosts (values, run index) and the (l1, w1) density change of each run."""
    found = [ghosts(run, eps=torch.finfo(op.dtype).eps) for run in runs]
    values = [np.concatenate([g["spurious"], g["copies"]]) for g in found]
    change = [density_change(run, bulk.to_normalized, sigma) for run in runs]
    return (
        np.concatenate(values),
        np.concatenate([np.full(len(v), i, dtype=np.int64) for i, v in enumerate(values)]),
        np.array([[c["l1"], c["w1"]] for c in change]),
    )


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
    keep_vectors: bool = False,
    reorth: str = "none",
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
            ``deflation_tol``: a few dozen products for C = 10, plus C for the outliers'
            true residuals). ``deflation_tol`` is also the tolerance under which an
            outlier counts as converged (both methods, :mod:`hspec.numerics.certify`).
        iterations: subspace iterations T of Alg. 5. k: smoothing constant (Alg. 3).
        seed: seeds every random vector (drawn on the CPU, so devices agree): the
            Lanczos start vectors' seed, ``spectrum.seed`` in the settings.
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
        keep_vectors: keep the outliers' eigenvectors in ``result.vectors``.
        reorth: re-orthogonalization of the bulk's Lanczos runs: ``"none"`` (the paper's
            FASTLANCZOS, O(dim) memory; its ghosts are reported in ``result.ghosts``) or
            ``"full"`` (every step against the whole basis: dim × steps memory and
            O(dim·steps²) work, no ghosts).
    """
    start_time = time.perf_counter()
    op = LinearOperator.wrap(matvec, dim, dtype=dtype, device=device)
    if method not in METHODS:
        raise HspecError(f"method: must be one of {METHODS}, got {method!r}")
    if reorth not in REORTH:
        raise HspecError(f"reorth: must be one of {REORTH}, got {reorth!r}")
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
    if not _is_real(deflation_tol) or not 0 < deflation_tol < 1:
        raise HspecError(f"deflation_tol: must be a number in (0, 1), got {deflation_tol!r}")

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
        reorth=reorth,
    )
    generator = torch.Generator().manual_seed(seed)
    stage, earlier, started = _no_checkpoint, 0.0, utc_now()
    if checkpoint is not None:
        saved = SpectrumCheckpoint(
            checkpoint, settings, op, key=checkpoint_key, interval=checkpoint_interval
        )
        op.hvp_count = saved.restore(generator)
        stage, earlier, started = saved.stage_runner(generator, op), saved.earlier, saved.started

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

    outliers, residuals, basis, target, project = np.empty(0), np.empty(0), None, op, None
    if deflate:

        def outlier_search(resume, snapshot):
            if deflation == "krylov":
                values, vectors, _ = top_eigenpairs(
                    op, deflate, tol=deflation_tol, generator=generator, progress=progress
                )
                op.context = "the outliers' residual product"
                product = op.matmat(vectors)
                op.context = ""
            else:
                values, vectors, product = low_rank_deflation(
                    op,
                    deflate,
                    iterations,
                    generator=generator,
                    progress=progress,
                    resume=resume,
                    snapshot=snapshot,
                    return_product=True,
                )
            return values, vectors, ritz_residuals(values, vectors, product)

        found = stage(
            "deflation",
            outlier_search,
            encode=lambda r: {
                "values": torch.from_numpy(r[0]),
                "basis": r[1],
                "residuals": torch.from_numpy(r[2]),
            },
            decode=lambda d: (
                d["values"].cpu().numpy(),
                d["basis"],
                d["residuals"].cpu().numpy(),
            ),
        )
        outliers, basis, residuals = found
        target = Deflated(op, basis)
        project = target.project
    share = (op.dim - deflate) / op.dim

    nodes = weights = moments = np.empty(0)
    node_run = ghost_runs = np.empty(0, dtype=np.int64)
    ghost_values, change = np.empty(0), np.empty((0, 2))
    if method == "lanczos":

        def lanczos(resume, snapshot):
            start = None if resume is not None else _start(target, generator, project)
            return fast_lanczos(
                target,
                steps,
                reorth=reorth,
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
        node_run = run_index(runs)
        weights = weights * share
        grid, density = lanczos_approx_spec(nodes, weights, bulk, steps=steps, points=points, k=k)
        ghost_values, ghost_runs, change = _diagnose(runs, bulk, smoothing_width(steps, k), op)
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

    bounds = error_bounds(outliers, residuals, bulk, torch.finfo(op.dtype).eps)
    seconds = earlier + time.perf_counter() - start_time
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
        seconds=seconds,
        settings=settings,
        runs=node_run,
        residuals=residuals,
        error_bounds=bounds,
        converged=converged(outliers, bounds, deflation_tol),
        vectors=basis if keep_vectors else None,
        ghosts=ghost_values,
        ghost_runs=ghost_runs,
        convergence_l1=change[:, 0],
        convergence_w1=change[:, 1],
        provenance={
            **environment(op.device),
            "started": started,
            "finished": utc_now(),
            "seconds": seconds,
        },
    )
