"""Where the outliers come from: the class/cross-class attribution of a spectrum.

Papyan (ICML 2019, JMLR 2020) explains the C outliers of G (and of H = G + R) by the class
means of the gradients: G = G0 + G1 + G2 + G_within (:mod:`hspec.curvature.class_structure`),
with G1 = Σ_c w_c (C−1) δ_c δ_cᵀ of rank ≤ C. :func:`class_attribution` measures it for one
model and split:

* the eigenvalues of G0, G1, G2, G1 + G2 and G0 + G1 + G2 (descending, the nonzero ones);
* the relative error |λ_k(part) − o_k| / |o_k| of the k-th largest eigenvalue of G1 and of
  G0 + G1 + G2 against the k-th of the given outliers o (the top C eigenvalues of the
  deflated operator), and how many are *explained*: relative error ≤ ``rtol``
  (:data:`EXPLAINED_RTOL`, 10%);
* the share of tr G in G0, G1, G2 and G_within.

**Two routes.** The *Gram route* (when the C² class means δ_{c,c'} fit ``memory_budget``,
C²·p numbers): D = [δ_{c,c'}] (p × C²) by one vjp per class and C cotangents over that
class's examples only (:func:`class_mean_matrix`: C backward passes over the split in all,
not C²), then every between-class part D Tᵀ T Dᵀ has the nonzero eigenvalues of the small
matrix T (DᵀD) Tᵀ (:func:`hspec.curvature.class_structure.gram_coefficients`) and the trace
tr(T DᵀD Tᵀ), exactly. The *Lanczos route* (otherwise, O(p) memory): thick-restart Lanczos
with full re-orthogonalization (:func:`hspec.numerics.outliers.top_eigenpairs`) on the
matrix-free ``class_g0``, ``class_g1`` (rank ≤ C: C + a few products give their eigenvalues
to rounding) and ``class_g0_g1_g2`` (its top C) operators; G2 and G1 + G2, of rank up to
C(C−1), are not computed there (empty).

**The trace.** tr G = (1/N) Σ_i Σ_{c'} ‖δ_{i,c'}‖² needs per-example gradients: N·C
backward rows of size p, tens of seconds for the demo's MLP, so it is estimated instead.
For a probe v, one forward pass with a jvp gives t_i = A_i J_i v, so vᵀ G v = (1/N) Σ_i ‖t_i‖²
and, with the class sums S_c = Σ_{i: y_i=c} t_i, vᵀ (G0 + G1 + G2) v = Σ_c ‖S_c‖² / (n_c N);
the difference is vᵀ G_within v. With Rademacher probes both are unbiased (Hutchinson). On
the Gram route tr(G0 + G1 + G2) is exact and only tr G_within = E[vᵀ G_within v] is
estimated — the bulk, whose quadratic form varies far less than G's, outliers included — so
tr G = tr(G0 + G1 + G2) + that estimate; on the Lanczos route tr G and tr(G0 + G1 + G2) are
both estimated and tr G2 = tr(G0 + G1 + G2) − tr G0 − tr G1. The standard error of the
estimate (sample standard deviation / √probes) is returned with it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor
from torch.func import vjp, vmap

from hspec.curvature.class_structure import (
    BETWEEN_COMPONENTS,
    coefficients,
    factor_product,
    factors,
    gram_coefficients,
)
from hspec.curvature.exact import eigenvalues
from hspec.curvature.operators import CurvatureOperator, curvature_operator
from hspec.errors import HspecError
from hspec.numerics.outliers import top_eigenpairs

#: an outlier is explained by a part when their relative difference is at most this
EXPLAINED_RTOL = 0.1
#: Rademacher probes of the trace estimate
PROBES = 8
#: the Gram route's default memory budget for the C² class means, bytes
MEMORY_BUDGET = 2**30
#: Ritz values lighter than this × 1/dim are Lanczos ghosts or unconverged copies
MIN_WEIGHT = 1e-9
#: Ritz values closer than this × the range of the nodes count once
GHOST_TOLERANCE = 1e-4
#: the parts whose eigenvalues are compared with the outliers
MATCHED = ("class_g1", "class_g0_g1_g2")
#: the parts the Lanczos route computes (rank ≤ C, or the top C of G0 + G1 + G2)
LANCZOS_PARTS = ("class_g0", "class_g1", "class_g0_g1_g2")


def num_classes(op: CurvatureOperator) -> int:
    """C, the logits' width, from the first batch (checked as every first pass checks it)."""
    next(iter(op._iter_batches()), None)
    if op._classes is None:
        raise HspecError("data: the split has no examples")
    return op._classes


def _pairs(op: CurvatureOperator):
    """The operator's batches as (inputs, targets) pairs of tensors: the class means slice
    a batch by class, which needs the plain classifier batches of the paper's pipeline."""
    for batch in op._iter_batches():
        if not (isinstance(batch, tuple) and len(batch) == 2 and op._culprit == "model"):
            raise HspecError(
                "data: the class-mean attribution needs (inputs, targets) batches of a "
                "classifier (no forward=)"
            )
        yield batch


def class_mean_matrix(op: CurvatureOperator, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """D with rows δ_{c,c'} (row c·C + c'), shape (C², p), and the class counts n_c (C,):
    per batch and class c, one forward of the examples of class c and the pullbacks of the
    C cotangents a_{i,c'} (rows of A_i), vmapped in chunks of ``chunk`` (default C). Each
    example is pulled back C times in all: C backward passes over the split."""
    sums, counts = None, None
    with op.evaluating():
        for x, y in _pairs(op):
            classes = op._classes
            if sums is None:
                sums = torch.zeros(classes, classes, op.dim, dtype=op.dtype, device=op.device)
                counts = torch.zeros(classes, dtype=torch.int64, device=op.device)
            counts += torch.bincount(y, minlength=classes)
            for c in torch.unique(y).tolist():
                batch = (x[y == c], y[y == c])
                logits, pullback = vjp(lambda p, b=batch: op.outputs(p, b)[0], op.params)
                cotangents = factors(logits.detach()).transpose(0, 1)  # (C', n_c, C)
                pulled = vmap(pullback, chunk_size=chunk or classes)(cotangents)[0]
                sums[c] += torch.cat([t.reshape(classes, -1) for t in pulled.values()], 1)
    if sums is None:
        raise HspecError("data: the split has no examples")
    means = sums / counts.clamp(min=1).to(sums.dtype)[:, None, None]
    return means.flatten(0, 1), counts


def rank(part: str, classes: int) -> int:
    """The largest rank of a between-class part for C classes: C for G0 and G1, C(C−2) for
    G2 (Σ_{c'≠c} ν_{c,c'} = 0), C(C−1) for G1 + G2 (the δ_{c,c'}, c' ≠ c), C² for G0+G1+G2."""
    C = classes
    return {"class_g0": C, "class_g1": C, "class_g2": C * (C - 2), "class_g1_g2": C * (C - 1)}.get(
        part, C * C
    )


def gram_parts(means: Tensor, counts: Tensor) -> tuple[dict, dict]:
    """({part: eigenvalues, descending}, {part: trace}) of every between-class part from D
    (C², p) and the counts, by the Gram matrix K = D Dᵀ: part = Dᵀ Tᵀ T D has the nonzero
    eigenvalues and the trace of T K Tᵀ (C×C for G0 and G1). Only the largest
    :func:`rank` many eigenvalues are kept (the others are 0 but for rounding)."""
    gram = (means @ means.T).to(torch.float64)
    weights = counts.to(torch.float64) / counts.sum()
    classes = len(counts)
    values, traces = {}, {}
    for part in BETWEEN_COMPONENTS:
        t = gram_coefficients(part, weights.to(gram.device))
        small = t @ gram @ t.T
        values[part] = eigenvalues(small)[::-1][: rank(part, classes)].copy()
        traces[part] = float(torch.trace(small))
    return values, traces


def lanczos_parts(
    model, data, classes: int, *, generator: torch.Generator, **operator
) -> dict[str, np.ndarray]:
    """The eigenvalues (descending) of G0 and G1 (rank ≤ C: all of them) and the top C of
    G0 + G1 + G2, by :func:`~hspec.numerics.outliers.top_eigenpairs` on the matrix-free
    parts (full re-orthogonalization): G0 and G1 to ~100 ε relative (residual criterion),
    G0 + G1 + G2 to max(1e-10, 100 ε) (gap criterion)."""
    values = {}
    for part in LANCZOS_PARTS:
        op = curvature_operator(model, data, part, **operator)
        eps = torch.finfo(op.dtype).eps
        # rank ≤ C: the breakdown after C steps makes them exact; the top C of G0 + G1 + G2
        # (rank ≤ C²) to the gap criterion's relative accuracy
        tol, criterion = (
            (100 * eps, "residual")
            if part != "class_g0_g1_g2"
            else (
                max(1e-10, 100 * eps),
                "gap",
            )
        )
        values[part] = top_eigenpairs(
            op, classes, tol=tol, criterion=criterion, generator=generator
        )[0]
    return values


def quadratic_forms(op: CurvatureOperator, v: Tensor) -> tuple[float, float]:
    """(vᵀ G v, vᵀ (G0 + G1 + G2) v) from one forward pass with a jvp (module docstring)."""
    tangent = op._unflatten(v)
    total, classes, sums, counts = 0.0, None, None, None
    with op.evaluating():
        for batch in op._iter_batches():
            logits, jv, y = op.outputs_jvp(op.params, batch, tangent)
            classes = op._classes
            t = factor_product(logits, jv).detach()
            total += float((t.to(torch.float64) ** 2).sum())
            step = coefficients(t, y, classes).to(torch.float64)
            sums = step if sums is None else sums + step
            n = torch.bincount(y, minlength=classes)
            counts = n if counts is None else counts + n
    if counts is None:
        raise HspecError("data: the split has no examples")
    between = (sums**2).sum(-1) / counts.clamp(min=1).to(torch.float64)
    count = int(counts.sum())
    return total / count, float(between.sum()) / count


def trace_estimates(op: CurvatureOperator, probes: int, generator: torch.Generator) -> dict:
    """Hutchinson estimates with Rademacher probes: ``{"g": (mean, stderr), "between": …,
    "within": …}`` of tr G, tr(G0 + G1 + G2) and tr G_within (stderr = sample std / √probes)."""
    samples = []
    for _ in range(probes):
        v = torch.randint(0, 2, (op.dim,), generator=generator).to(op.dtype) * 2 - 1
        g, between = quadratic_forms(op, v.to(op.device))
        samples.append((g, between, g - between))
    samples = np.asarray(samples)
    stderr = samples.std(0, ddof=1) / np.sqrt(probes) if probes > 1 else np.full(3, np.nan)
    return {
        name: (float(samples[:, k].mean()), float(stderr[k]))
        for k, name in enumerate(("g", "between", "within"))
    }


def match(outliers: np.ndarray, values: np.ndarray, rtol: float) -> tuple[np.ndarray, int]:
    """Relative errors |v_k − o_k| / |o_k| of the k-th largest ``values`` against the k-th
    largest outlier (k < min of the lengths), and how many are at most ``rtol``."""
    o = np.sort(np.asarray(outliers, dtype=float))[::-1]
    v = np.sort(np.asarray(values, dtype=float))[::-1]
    k = min(len(o), len(v))
    errors = np.abs(v[:k] - o[:k]) / np.maximum(np.abs(o[:k]), np.finfo(float).tiny)
    return errors, int((errors <= rtol).sum())


def class_attribution(
    model,
    data,
    outliers,
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    memory_budget: int = MEMORY_BUDGET,
    route: str = "auto",
    probes: int = PROBES,
    rtol: float = EXPLAINED_RTOL,
    seed: int = 0,
) -> dict:
    """The attribution of ``outliers`` (the top C eigenvalues of the deflated G or H of
    ``model`` on ``data``) to the class means (module docstring).

    Args:
        model, data, batch_size, dtype, device: as :func:`hspec.curvature_operator`.
        outliers: the eigenvalues to explain (any order; the C largest are matched).
        memory_budget: bytes the Gram route may use for the C² class means; ``route="auto"``
            takes it when C²·p numbers fit, else the Lanczos route (``"gram"``, ``"lanczos"``
            force one).
        probes: Rademacher probes of the trace estimate (≥ 2 for a standard error).
        rtol: an outlier is explained when the relative error is at most this.
        seed: seeds the probes and the Lanczos start vectors.

    Returns:
        A dict: ``values`` {part: eigenvalues, descending} for the parts computed;
        ``relative_errors`` and ``explained`` {part: …} for G1 and G0 + G1 + G2;
        ``traces`` {"class_g0", "class_g1", "class_g2", "class_g0_g1_g2", "class_within",
        "gradient_covariance": value}, ``trace_stderr`` (the same keys; 0 when exact) and
        ``trace_shares`` (each over tr G); ``outliers`` (descending), ``num_classes``,
        ``route``, ``rtol``, ``probes``, ``seconds``.
    """
    if route not in ("auto", "gram", "lanczos"):
        raise HspecError(f"route: must be auto, gram or lanczos, got {route!r}")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    operator = {"batch_size": batch_size, "dtype": dtype, "device": device}
    op = curvature_operator(model, data, "gradient_covariance", **operator)
    classes = num_classes(op)
    need = classes * classes * op.dim * torch.empty(0, dtype=op.dtype).element_size()
    if route == "auto":
        route = "gram" if need <= memory_budget else "lanczos"
    estimates = trace_estimates(op, probes, generator)
    if route == "gram":
        values, exact = gram_parts(*class_mean_matrix(op))
        traces = {**exact, "class_within": estimates["within"][0]}
        traces["gradient_covariance"] = exact["class_g0_g1_g2"] + traces["class_within"]
        stderr = {name: 0.0 for name in exact}
        stderr["class_within"] = stderr["gradient_covariance"] = estimates["within"][1]
    else:
        values = lanczos_parts(model, data, classes, generator=generator, **operator)
        values.update({"class_g2": np.empty(0), "class_g1_g2": np.empty(0)})
        traces = {
            "class_g0": float(values["class_g0"].sum()),
            "class_g1": float(values["class_g1"].sum()),
            "class_g0_g1_g2": estimates["between"][0],
            "class_within": estimates["within"][0],
            "gradient_covariance": estimates["g"][0],
        }
        traces["class_g2"] = traces["class_g0_g1_g2"] - traces["class_g0"] - traces["class_g1"]
        traces["class_g1_g2"] = traces["class_g0_g1_g2"] - traces["class_g0"]
        stderr = {"class_g0": 0.0, "class_g1": 0.0, "gradient_covariance": estimates["g"][1]}
        for name in ("class_g0_g1_g2", "class_g2", "class_g1_g2"):
            stderr[name] = estimates["between"][1]
        stderr["class_within"] = estimates["within"][1]
    outliers = np.sort(np.asarray(outliers, dtype=float))[::-1][:classes]
    matched = {part: match(outliers, values[part][:classes], rtol) for part in MATCHED}
    return {
        "values": values,
        "outliers": outliers,
        "relative_errors": {part: errors for part, (errors, _) in matched.items()},
        "explained": {part: count for part, (_, count) in matched.items()},
        "traces": traces,
        "trace_stderr": stderr,
        "trace_shares": {
            name: value / traces["gradient_covariance"] for name, value in traces.items()
        },
        "num_classes": classes,
        "route": route,
        "rtol": rtol,
        "probes": probes,
        "seconds": time.perf_counter() - start,
    }


def ritz_outliers(nodes, weights, dim: int, classes: int) -> np.ndarray:
    """The ``classes`` largest distinct Ritz values of a spectrum's Lanczos runs (no product):
    nodes lighter than :data:`MIN_WEIGHT`/dim (Lanczos ghosts and unconverged copies) are
    dropped and repeats within :data:`GHOST_TOLERANCE` × the nodes' range (the copies of a
    converged Ritz value that Lanczos without re-orthogonalization makes) count once. The
    top Ritz values of M ≥ C steps converge first; a Ritz value never exceeds the matching
    eigenvalue (interlacing), so this can only under-, not over-estimate the outliers."""
    nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    values = np.sort(nodes[weights >= MIN_WEIGHT / dim])[::-1]
    if values.size == 0:
        return values
    tolerance = GHOST_TOLERANCE * (values[0] - values[-1])
    distinct = values[np.concatenate([[True], -np.diff(values) > tolerance])]
    return distinct[:classes]


def spectrum_outliers(result, op, classes: int, tol: float, seed: int = 0) -> tuple:
    """(the top ``classes`` eigenvalues of the spectrum ``result`` of ``op``, where they come
    from): a deflated spectrum's own outliers when it has at least C (``"deflated"``), else,
    for a spectrum without deflation, the C largest distinct Ritz values of its Lanczos runs
    (``"ritz"``, :func:`ritz_outliers`, free), else (KPM, or deflated with fewer than C) the
    C of largest magnitude by thick-restart Lanczos to relative accuracy ``tol``
    (``"krylov"``)."""
    if len(result.outliers) >= classes:
        return np.sort(np.asarray(result.outliers))[::-1][:classes], "deflated"
    if len(result.outliers) == 0:  # the nodes are of A itself, not of a deflated P A P
        ritz = ritz_outliers(result.nodes, result.weights, result.dim, classes)
        if len(ritz) == classes:
            return ritz, "ritz"
    generator = torch.Generator().manual_seed(seed)
    return top_eigenpairs(op, classes, tol=tol, generator=generator)[0], "krylov"


def spectrum_attribution(result, op, model, data, **options) -> dict:
    """:func:`class_attribution` of a spectrum ``result`` of ``op`` (G or H of ``model`` on
    ``data``), its outliers from :func:`spectrum_outliers` (``outlier_source`` in the dict);
    ``options`` go to :func:`class_attribution` (``batch_size``, ``dtype``, ``device``, …)."""
    classes = num_classes(op)
    tol = result.settings.get("deflation_tol") or 1e-4
    outliers, source = spectrum_outliers(result, op, classes, tol, options.get("seed", 0))
    return {**class_attribution(model, data, outliers, **options), "outlier_source": source}
