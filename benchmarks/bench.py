"""Benchmark hspec's curvature products against a gradient pass and against two peers.

For each model, on the same data and device, in one process (see benchmarks/README.md):

* the full-dataset gradient pass: Σ_batches loss_sum.backward(), divided by N;
* full-dataset products H v, G v, R v of ``hspec.curvature_operator`` (``matvec``);
* a block ``matmat`` of 10 vectors against 10 single products;
* with ``--peers``: the same H v through PyHessian 0.1 (``dataloader_hv_product``) and
  through curvlinops (``HessianLinearOperator``), and G v through curvlinops'
  ``GGNLinearOperator`` (for cross-entropy the GGN is G), with the relative difference of
  every result from hspec's on the same vector;
* one whole spectrum (``spectral_density`` with deflation: Alg. 4, Alg. 5, Alg. 3) and the
  same outliers by ``hspec.numerics.outliers.top_eigenpairs``, with their product counts.

Each timing is the median over ``--repeats`` runs after a warm-up run, synchronized on
CUDA. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed runs (also
given above the allocation before them); on the CPU the resident-set size sampled every
2 ms during the runs, above the RSS before them, and ``ru_maxrss`` (the process-wide
high-water mark so far, which only grows). Writes every raw number to ``--out`` (JSON)
and tables to ``--markdown``.

    python benchmarks/bench.py --models mlp,cnn --device cpu --peers \\
        --out benchmarks/results-cpu.json --markdown benchmarks/results-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

# known, harmless: PyHessian's backward(create_graph=True); torch.jit.script deprecation
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hspec  # noqa: E402
from hspec import curvature_operator, spectral_density  # noqa: E402
from hspec.curvature.operators import HVP_MODES, PRECISIONS  # noqa: E402
from hspec.numerics.analysis import wasserstein1  # noqa: E402
from hspec.numerics.linear_operator import LinearOperator  # noqa: E402
from hspec.numerics.outliers import top_eigenpairs  # noqa: E402
from hspec.settings import SPECTRUM  # noqa: E402

DIGITS_MODELS = ("mlp", "cnn")  # 8×8 one-channel nets, run on the real digits train split
COMPONENTS = ("hessian", "gradient_covariance", "prediction_hessian")
# each peer's product, the hspec product it is compared with, and the agreement's name
PEER_AGREEMENTS = (
    ("pyhessian_hessian", "hessian", "pyhessian_vs_hspec_H"),
    ("curvlinops_hessian", "hessian", "curvlinops_vs_hspec_H"),
    ("curvlinops_ggn", "gradient_covariance", "curvlinops_ggn_vs_hspec_G"),
)


# -- measurement helpers --------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident-set size of this process, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.available = os.path.exists("/proc/self/statm")
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        if self.available:
            self.before = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def measure(fn, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs, with the
    peak memory (CUDA: of the timed runs; CPU: sampled over the warm-up and timed runs);
    the last result is kept under ``"result"``."""
    result = None
    sampler = RssSampler().__enter__() if device.type != "cuda" else None
    try:
        for _ in range(warmup):
            result = fn()
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    finally:
        if sampler is not None:
            sampler.__exit__()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        memory = {
            "peak_mb": peak / 2**20,
            "peak_above_before_mb": (peak - before) / 2**20,
            "memory_kind": "torch.cuda.max_memory_allocated",
        }
    else:
        available = sampler.available
        memory = {
            "peak_mb": sampler.peak / 2**20 if available else None,
            "peak_above_before_mb": (sampler.peak - sampler.before) / 2**20 if available else None,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "memory_kind": "process RSS sampled every 2 ms (/proc/self/statm); "
            "ru_maxrss: the process's high-water mark so far",
        }
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "warmup": warmup,
        **memory,
        "result": result,
    }


def measure_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """:func:`measure` for several functions, their runs interleaved (round robin), so a
    change in a shared machine's load during the runs hits every function alike."""
    calls: dict = {key: [] for key in fns}
    for round_ in range(warmup + repeats):
        for key, fn in fns.items():
            call = measure(fn, device, repeats=1, warmup=0)
            if round_ >= warmup:
                calls[key].append(call)
    found = {}
    for key, runs in calls.items():

        def peak(field, runs=runs):
            values = [r[field] for r in runs if r.get(field) is not None]
            return max(values) if values else None

        found[key] = {
            "median_s": statistics.median(r["median_s"] for r in runs),
            "times_s": [r["median_s"] for r in runs],
            "warmup": warmup,
            "interleaved": True,
            "peak_mb": peak("peak_mb"),
            "peak_above_before_mb": peak("peak_above_before_mb"),
            "memory_kind": runs[0]["memory_kind"],
            "result": runs[-1]["result"],
        }
    return found


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- data and models ------------------------------------------------------------------
def load_data(
    name: str, n: int, seed: int, separation: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Digits nets: the real digits train split (its first n examples); the others:
    CIFAR-shaped random data, 3×32×32 Gaussian inputs with uniform labels of 10 classes,
    plus ``separation`` × a random unit-variance mean image per class (0: no structure)."""
    if name in DIGITS_MODELS:
        from hspec.pipeline.data import load_split

        x, y = load_split("digits", "train")
        return x[:n], y[:n], f"digits train split, first {min(n, len(x))} of {len(x)}"
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    if separation:
        x += separation * torch.randn(10, 3, 32, 32, generator=generator)[y]
    return (
        x,
        y,
        (
            "random CIFAR-shaped data (3×32×32 Gaussian inputs, 10 uniform labels"
            + (f", class means × {separation:g})" if separation else ")")
        ),
    )


def build_model(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    lr: float = 0.05,
) -> tuple[nn.Module, dict]:
    """The network with seeded weights; ``epochs`` of plain SGD on (x, y) first, so the
    spectrum has the trained shape (bulk plus outliers). Returned in eval mode."""
    from hspec.pipeline.models import create

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create(name, x.shape[1], 10).to(device)
    info = {"train_epochs": epochs, "train_lr": lr}
    if epochs:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            for batch in order.split(min(128, batch_size)):
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(batch_size)])
        info["train_loss"] = float(nn.functional.cross_entropy(logits, y))
        info["train_accuracy"] = float((logits.argmax(1) == y).float().mean())
    return model, info


def gradient_pass(model: nn.Module, batches: list) -> list[torch.Tensor]:
    """Σ_batches (summed loss).backward(), divided by N: the full-dataset gradient."""
    model.zero_grad(set_to_none=True)
    count = 0
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        count += len(y)
    grads = [p.grad / count for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return grads


# -- peers ----------------------------------------------------------------------------
def pyhessian_product(model, batches, device):
    from pyhessian import hessian

    runner = hessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
    params = runner.params
    numels = [p.numel() for p in params]

    def product(v: torch.Tensor) -> torch.Tensor:
        vs = [c.view_as(p) for c, p in zip(torch.split(v, numels), params)]
        _, hv = runner.dataloader_hv_product(vs)
        model.zero_grad(set_to_none=True)
        return torch.cat([t.reshape(-1) for t in hv])

    return product


def curvlinops_products(model, batches, n):
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.CrossEntropyLoss(reduction="mean")
    hess = HessianLinearOperator(
        model, loss, params, batches, check_deterministic=False, num_data=n
    )
    ggn = GGNLinearOperator(model, loss, params, batches, check_deterministic=False, num_data=n)
    return (lambda v: hess @ v), (lambda v: ggn @ v)


# -- one model ------------------------------------------------------------------------
def bench_model(name: str, args, device: torch.device) -> dict:
    n = args.n if name not in DIGITS_MODELS else min(args.n, 1437)
    x, y, data_note = load_data(name, n, args.seed, args.separation)
    n = len(y)
    x, y = x.to(device), y.to(device)
    epochs = args.train_epochs if name in DIGITS_MODELS else args.train_epochs_cifar
    model, train_info = build_model(
        name, x, y, epochs, args.batch_size, args.seed, device, args.train_lr
    )
    batches = list(zip(x.split(args.batch_size), y.split(args.batch_size)))
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    out: dict = {
        "model": name,
        "params": p,
        "n": n,
        "batch_size": args.batch_size,
        "data": data_note,
        **train_info,
        "timings": {},
        "agreement": {},
        "errors": {},
    }
    timings = out["timings"]
    log = lambda *a: print(f"[{name}]", *a, flush=True)
    log(f"p = {p:,}, N = {n}, batch {args.batch_size}, {data_note}")

    def record(key: str, fn, repeats: int = args.repeats, warmup: int = 1):
        result = measure(fn, device, repeats, warmup)
        value = result.pop("result")
        timings[key] = result
        log(f"{key}: {result['median_s']:.4g} s (median of {repeats})")
        return value

    generator = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(p, generator=generator).to(device)

    def operator(component: str, **kwargs):
        return curvature_operator(
            model,
            (x, y),
            component,
            batch_size=args.batch_size,
            device=device,
            tf32=args.tf32,
            resident=True,
            **kwargs,
        )

    ops = {c: operator(c) for c in COMPONENTS}
    out["default_hvp"] = default = ops["hessian"].hvp
    singles = {"gradient": lambda: gradient_pass(model, batches)}
    singles.update({c: (lambda c=c: ops[c].matvec(v)) for c in COMPONENTS})
    for mode in (m for m in HVP_MODES if m != default):  # the default is "hessian"
        singles[f"hessian[{mode}]"] = lambda op=operator("hessian", hvp=mode): op.matvec(v)  # noqa: B008 (bound per mode)
    if args.peers:
        for peer, build in (
            ("pyhessian", lambda: {"pyhessian_hessian": pyhessian_product(model, batches, device)}),
            (
                "curvlinops",
                lambda: dict(
                    zip(
                        ("curvlinops_hessian", "curvlinops_ggn"),
                        curvlinops_products(model, batches, n),
                    )
                ),
            ),
        ):
            try:
                for key, product in build().items():
                    product(v)  # a broken peer is reported, not fatal
                    singles[key] = lambda product=product: product(v)
            except Exception as error:  # noqa: BLE001
                out["errors"][peer] = "".join(traceback.format_exception_only(error))
                log(f"{peer} failed:", out["errors"][peer])
    log(f"{len(singles)} single products, interleaved, median of {args.repeats}")
    results = {}
    for key, timing in measure_interleaved(singles, device, args.repeats).items():
        results[key] = timing.pop("result")
        timings[key] = timing
        log(f"{key}: {timing['median_s']:.4g} s")
    model.zero_grad(set_to_none=True)
    grad_s = timings["gradient"]["median_s"]
    agreement = out["agreement"]
    agreement["H_vs_G_plus_R"] = relative_difference(
        results["gradient_covariance"] + results["prediction_hessian"], results["hessian"]
    )
    for key in results:
        if key.startswith("hessian["):
            agreement[f"H{key.removeprefix('hessian')}_vs_H"] = relative_difference(
                results[key], results["hessian"]
            )
    for key, versus, label in PEER_AGREEMENTS:
        if key in results:
            agreement[label] = relative_difference(results[key], results[versus])

    block = torch.randn(p, 10, generator=generator).to(device)
    block[:, 0] = v
    for mode in args.block_modes:
        key = f"hessian_block10[{mode}]"
        op = operator("hessian", hvp=mode, block_size=args.block_size)
        got = record(key, lambda: op.matmat(block), repeats=args.block_repeats, warmup=0)
        out["agreement"][f"block10[{mode}]_column0_vs_matvec"] = relative_difference(
            got[:, 0], results["hessian"]
        )
        fastest = min(
            (k for k in timings if k.startswith("hessian") and "block" not in k),
            key=lambda k: timings[k]["median_s"],
        )
        timings[key]["ten_singles_s"] = 10 * timings[fastest]["median_s"]
        timings[key]["ten_singles_note"] = f"10 × the median single {fastest} (the fastest)"
        timings[key]["block_size"] = args.block_size

    for t in timings.values():
        t["ratio_to_gradient"] = t["median_s"] / grad_s
    out["targets"] = targets(timings)

    if name in args.spectrum_models:
        out["spectrum"], out["outliers"] = bench_spectrum(ops["hessian"], args, log)
    if name in args.outlier_models:
        out["krylov_outliers"] = bench_outliers(ops["hessian"], args, log)
    if name in args.precision_models:
        out["precision"] = bench_precision(model, x, y, args, device, log)
    if name in args.compile_models:
        out["compile"] = [
            bench_compile(model, x, y, v, hvp, device, args, log) for hvp in args.compile_modes
        ]
    return out


def targets(timings: dict) -> dict:
    """The speed targets, each with its measured value and whether it is met."""
    found: dict = {}
    h = timings["hessian"]["median_s"]
    found["H_over_gradient"] = {"value": timings["hessian"]["ratio_to_gradient"], "target": 2.5}
    best = min(
        (k for k in timings if k.startswith("hessian") and "block" not in k),
        key=lambda k: timings[k]["median_s"],
    )
    found["best_H_over_gradient"] = {
        "value": timings[best]["ratio_to_gradient"],
        "target": 2.5,
        "mode": best,
    }
    peers = [
        timings[k]["median_s"] for k in ("pyhessian_hessian", "curvlinops_hessian") if k in timings
    ]
    if peers:
        found["H_over_faster_peer"] = {"value": h / min(peers), "target": 0.75}
        found["best_H_over_faster_peer"] = {
            "value": timings[best]["median_s"] / min(peers),
            "target": 0.75,
            "mode": best,
        }
    found["G_over_gradient"] = {
        "value": timings["gradient_covariance"]["ratio_to_gradient"],
        "target": 2.0,
    }
    found["R_over_H"] = {"value": timings["prediction_hessian"]["median_s"] / h, "target": 1.0}
    blocks = {
        k: t["median_s"] / t["ten_singles_s"]
        for k, t in timings.items()
        if k.startswith("hessian_block10")
    }
    if blocks:
        best = min(blocks, key=blocks.get)
        found["block10_over_ten_singles"] = {"value": blocks[best], "target": 0.6, "mode": best}
    for item in found.values():
        item["met"] = bool(item["value"] <= item["target"])
    return found


def timed_spectrum(op, **settings):
    synchronize(op.device)
    start = time.perf_counter()
    result = spectral_density(op, **settings)
    synchronize(op.device)
    return result, time.perf_counter() - start


def bulk_distance(a, b) -> float:
    """W1 between two estimates' bulk quadratures (Ritz nodes, weights), over the
    spectral range of ``b``."""
    return wasserstein1(a.nodes, a.weights, b.nodes, b.weights) / (b.lambda_max - b.lambda_min)


def bench_spectrum(op, args, log) -> tuple[dict, dict]:
    """One spectrum at the paper's settings (Alg. 4, Alg. 5, Alg. 3), the same with the
    Krylov deflation, and the same outliers by top_eigenpairs alone."""
    settings = dict(
        deflate=args.deflate,
        steps=args.steps,
        bound_steps=args.bound_steps,
        iterations=args.iterations,
        seed=args.seed,
    )
    result, seconds = timed_spectrum(op, **settings)
    spectrum = {
        "settings": settings,
        "hvp_count": result.hvp_count,
        "seconds": seconds,
        "outliers": result.outliers.tolist(),
        "lambda_min": result.lambda_min,
        "lambda_max": result.lambda_max,
    }
    log(f"spectrum: {result.hvp_count} products, {seconds:.4g} s")
    krylov, seconds = timed_spectrum(op, **settings, deflation="krylov")
    reference = result.outliers
    spectrum["krylov"] = {
        "hvp_count": krylov.hvp_count,
        "seconds": seconds,
        "outliers": krylov.outliers.tolist(),
        "max_relative_difference_of_outliers": float(
            np.max(np.abs(krylov.outliers - reference) / np.abs(reference))
        ),
        "bulk_w1_over_range": bulk_distance(krylov, result),
    }
    log(
        f"spectrum, krylov deflation: {krylov.hvp_count} products, {seconds:.4g} s, "
        f"outliers {spectrum['krylov']['max_relative_difference_of_outliers']:.1e}, bulk W1 "
        f"{spectrum['krylov']['bulk_w1_over_range']:.1e} of the range"
    )

    counted = LinearOperator.wrap(op)
    start = time.perf_counter()
    values, _, products = top_eigenpairs(
        counted, args.deflate, tol=args.tol, generator=torch.Generator().manual_seed(args.seed)
    )
    synchronize(op.device)
    seconds = time.perf_counter() - start
    outliers = {
        "tol": args.tol,
        "products": products,
        "seconds": seconds,
        "values": values.tolist(),
        "max_relative_difference_to_alg5": float(
            np.max(np.abs(values - reference) / np.abs(reference))
        ),
        "alg5_products": args.deflate * args.iterations,
    }
    log(
        f"top_eigenpairs: {products} products, {seconds:.4g} s, max rel. diff to Alg. 5 "
        f"{outliers['max_relative_difference_to_alg5']:.2e}"
    )
    return spectrum, outliers


def bench_outliers(op, args, log) -> dict:
    """The top C eigenvalues by top_eigenpairs at ``--tol`` against a reference run of
    the same method from another start vector to ``--reference-tol`` (where Alg. 5's
    T × C products are out of reach; float32 rounding floors what a reference can reach)."""
    found = []
    for seed, tol, limit in (
        (args.seed, args.tol, None),
        (args.seed + 3, args.reference_tol, args.reference_max_products),
    ):
        counted = LinearOperator.wrap(op)
        synchronize(op.device)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values, _, products = top_eigenpairs(
                counted,
                args.deflate,
                tol=tol,
                max_products=limit,
                generator=torch.Generator().manual_seed(seed),
            )
        synchronize(op.device)
        found.append(
            {
                "tol": tol,
                "products": products,
                "values": values.tolist(),
                "seconds": time.perf_counter() - start,
                "converged": not any("max_products" in str(w.message) for w in caught),
            }
        )
        log(f"top_eigenpairs to {tol:g}: {products} products, converged {found[-1]['converged']}")
    got, reference = np.array(found[0]["values"]), np.array(found[1]["values"])
    return {
        "run": found[0],
        "reference": found[1],
        "budget": 4 * args.deflate + 64,
        "max_relative_difference": float(np.max(np.abs(got - reference) / np.abs(reference))),
    }


def bench_precision(model, x, y, args, device, log) -> dict:
    """One deflated spectrum (Krylov outliers) per precision policy on the same operator
    and start vectors: seconds per H v, outliers and bulk against float64's."""
    runs = {}
    for name in ("float64", "float32") + (("tf32",) if device.type == "cuda" else ()):
        op = curvature_operator(
            model,
            (x, y),
            "hessian",
            batch_size=args.batch_size,
            device=device,
            resident=True,
            **PRECISIONS[name],
        )
        vector = torch.randn(
            op.dim, generator=torch.Generator().manual_seed(args.seed + 2), dtype=op.dtype
        ).to(device)
        timing = measure(lambda: op.matvec(vector), device, args.repeats)
        result, seconds = timed_spectrum(
            op,
            deflate=args.deflate,
            steps=args.steps,
            bound_steps=args.bound_steps,
            deflation="krylov",
            seed=args.seed,
        )
        runs[name] = {
            "hv_median_s": timing["median_s"],
            "spectrum_s": seconds,
            "hvp_count": result.hvp_count,
            "result": result,
        }
    reference = runs["float64"]["result"]
    for name, run in runs.items():
        result = run.pop("result")
        run["outliers_max_relative_difference"] = float(
            np.max(np.abs(result.outliers - reference.outliers) / np.abs(reference.outliers))
        )
        run["bulk_w1_over_range"] = bulk_distance(result, reference)
        log(
            f"precision {name}: H v {run['hv_median_s']:.4g} s, outliers "
            f"{run['outliers_max_relative_difference']:.1e}, bulk W1 "
            f"{run['bulk_w1_over_range']:.1e} of the range (vs float64)"
        )
    return runs


def bench_compile(model, x, y, v, hvp, device, args, log) -> dict:
    """``curvature_operator(..., hvp=hvp, compile=True)`` against eager for H v: the
    compile time (first product) and the seconds per full-dataset product, to see whether
    it pays."""

    def operator(compile: bool):
        return curvature_operator(
            model,
            (x, y),
            "hessian",
            batch_size=args.batch_size,
            device=device,
            tf32=args.tf32,
            resident=True,
            compile=compile,
            hvp=hvp,
        )

    torch._dynamo.reset()  # a fresh compile: a process shares one recompile limit
    eager, compiled = operator(False), operator(True)
    synchronize(device)
    start = time.perf_counter()
    got = compiled.matvec(v)  # compiles, once per batch shape
    synchronize(device)
    compile_s = time.perf_counter() - start
    slow = measure(lambda: eager.matvec(v), device, args.repeats)
    fast = measure(lambda: compiled.matvec(v), device, args.repeats)
    saved = slow["median_s"] - fast["median_s"]
    report = {
        "hvp": compiled.hvp,
        "compile_and_first_product_s": compile_s,
        "eager_s": slow["median_s"],
        "compiled_s": fast["median_s"],
        "relative_difference": relative_difference(got, slow["result"]),
        "products_to_repay": compile_s / saved if saved > 0 else None,
    }
    log(
        f"torch.compile [{compiled.hvp}]: {compile_s:.3g} s to compile, H v "
        f"{slow['median_s']:.4g} s eager vs {fast['median_s']:.4g} s compiled"
    )
    return report


# -- output ---------------------------------------------------------------------------
def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def _cell(t: dict, key: str) -> str:
    if key not in t:
        return "–"
    return f"{_fmt(t[key]['median_s'])} ({t[key]['ratio_to_gradient']:.2f}×)"


def _speed_tables(models: list) -> list[str]:
    lines = [
        "| model | params | N | gradient s | H v s (×grad) | G v s (×grad) | "
        "R v s (×grad) | PyHessian H v s (×grad) | curvlinops H v s (×grad) | "
        "curvlinops GGN v s (×grad) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        t = m["timings"]
        lines.append(
            f"| {m['model']} | {m['params']:,} | {m['n']} | "
            f"{_fmt(t['gradient']['median_s'])} | {_cell(t, 'hessian')} | "
            f"{_cell(t, 'gradient_covariance')} | {_cell(t, 'prediction_hessian')} | "
            f"{_cell(t, 'pyhessian_hessian')} | {_cell(t, 'curvlinops_hessian')} | "
            f"{_cell(t, 'curvlinops_ggn')} |"
        )
    default = {m.get("default_hvp") for m in models}
    lines += [
        "",
        f"H v by differentiation mode (`hvp=`; H v above is `auto`: {', '.join(default)}), and "
        "blocks of 10 vectors (`matmat`, vmap over `--block-size` columns) against 10 × "
        "the fastest single H v:",
        "",
        "| model | "
        + " | ".join(f"H v {m} s (×grad)" for m in HVP_MODES)
        + " | "
        + " | ".join(f"block {m} / 10 fastest singles" for m in HVP_MODES)
        + " |",
        "|---|" + "---:|" * (2 * len(HVP_MODES)),
    ]
    for m in models:
        t = m["timings"]
        singles = [
            _cell(t, "hessian" if mode == m["default_hvp"] else f"hessian[{mode}]")
            for mode in HVP_MODES
        ]
        blocks = []
        for mode in HVP_MODES:
            b = t.get(f"hessian_block10[{mode}]")
            blocks.append("–" if b is None else f"{b['median_s'] / b['ten_singles_s']:.2f}")
        lines.append(f"| {m['model']} | " + " | ".join(singles + blocks) + " |")
    return lines


def _target_table(models: list) -> list[str]:
    keys = {
        "H_over_gradient": "H/grad ≤ 2.5",
        "best_H_over_gradient": "best mode H/grad ≤ 2.5",
        "H_over_faster_peer": "H/faster peer ≤ 0.75",
        "best_H_over_faster_peer": "best mode H/faster peer ≤ 0.75",
        "G_over_gradient": "G/grad ≤ 2",
        "R_over_H": "R/H ≤ 1",
        "block10_over_ten_singles": "best block/10 fastest singles ≤ 0.6",
    }
    lines = ["| model | " + " | ".join(keys.values()) + " |", "|---|" + "---|" * len(keys)]
    for m in models:
        cells = []
        for key in keys:
            item = m["targets"].get(key)
            cells.append(
                "–" if item is None else f"{item['value']:.2f} {'✓' if item['met'] else '✗'}"
            )
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    return lines


def _memory_table(models: list, cuda: bool) -> list[str]:
    mem_kind = (
        "peak GPU memory allocated"
        if cuda
        else "peak RSS sampled during the runs, above the RSS before them"
    )
    block_keys = [f"hessian_block10[{mode}]" for mode in HVP_MODES]
    lines = [
        f"Agreement (‖a − b‖/‖b‖ on the same vector) and memory ({mem_kind}, MB):",
        "",
        "| model | H vs G+R | modes vs H (max) | block col. vs matvec (max) | "
        "PyHessian vs hspec H | curvlinops vs hspec H | curvlinops GGN vs hspec G | "
        "mem grad | mem H | mem G | mem R | mem blocks | mem PyHessian | "
        "mem curvlinops H |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    key = "peak_mb" if cuda else "peak_above_before_mb"
    for m in models:
        a, t = m["agreement"], m["timings"]

        def mem(k):
            return "–" if k not in t or t[k].get(key) is None else f"{t[k][key]:.0f}"

        modes = [v for k, v in a.items() if k.startswith("H[")]
        blocks = [v for k, v in a.items() if k.startswith("block10")]
        lines.append(
            f"| {m['model']} | {_fmt(a.get('H_vs_G_plus_R'), 2)} | "
            f"{_fmt(max(modes, default=None), 2)} | {_fmt(max(blocks, default=None), 2)} | "
            f"{_fmt(a.get('pyhessian_vs_hspec_H'), 2)} | "
            f"{_fmt(a.get('curvlinops_vs_hspec_H'), 2)} | "
            f"{_fmt(a.get('curvlinops_ggn_vs_hspec_G'), 2)} | {mem('gradient')} | "
            f"{mem('hessian')} | {mem('gradient_covariance')} | "
            f"{mem('prediction_hessian')} | {' / '.join(mem(k) for k in block_keys)} | "
            f"{mem('pyhessian_hessian')} | {mem('curvlinops_hessian')} |"
        )
    return lines


def _spectrum_tables(models: list) -> list[str]:
    lines = []
    spectra = [m for m in models if "spectrum" in m]
    if spectra:
        lines += [
            "",
            "Whole spectrum at the paper's settings (Alg. 4 + Alg. 5 + Alg. 3), the "
            "same with Krylov deflation, and the outliers by `top_eigenpairs` alone:",
            "",
            "| model | settings | paper recipe products | s | Krylov-deflated products | "
            "s | outliers max rel. diff | bulk W1 / range | top_eigenpairs products | "
            "max rel. diff to Alg. 5 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in spectra:
            s, o, k = m["spectrum"], m["outliers"], m["spectrum"]["krylov"]
            st = s["settings"]
            lines.append(
                f"| {m['model']} | C={st['deflate']}, M={st['steps']}, M0={st['bound_steps']}, "
                f"T={st['iterations']}, tol={o['tol']:g} | {s['hvp_count']} | "
                f"{s['seconds']:.3g} | {k['hvp_count']} | {k['seconds']:.3g} | "
                f"{k['max_relative_difference_of_outliers']:.1e} | "
                f"{k['bulk_w1_over_range']:.1e} | {o['products']} | "
                f"{o['max_relative_difference_to_alg5']:.1e} |"
            )
    found = [m for m in models if "krylov_outliers" in m]
    if found:
        lines += [
            "",
            "Top C eigenvalues by `top_eigenpairs` against the same method run "
            "from another start vector to a tighter tolerance:",
            "",
            "| model | tol | products | budget 4C+64 | s | reference tol | reference "
            "products (converged) | max rel. diff |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in found:
            o, r = m["krylov_outliers"], m["krylov_outliers"]["reference"]
            lines.append(
                f"| {m['model']} | {o['run']['tol']:g} | {o['run']['products']} | "
                f"{o['budget']} | {o['run']['seconds']:.3g} | {r['tol']:g} | "
                f"{r['products']} ({'yes' if r['converged'] else 'no'}) | "
                f"{o['max_relative_difference']:.1e} |"
            )
    precision = [m for m in models if "precision" in m]
    if precision:
        lines += [
            "",
            "Precision policy: one Krylov-deflated spectrum per policy, same operator "
            "and start vectors, against float64:",
            "",
            "| model | policy | H v s | spectrum products | spectrum s | outliers max rel. "
            "diff | bulk W1 / range |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for m in precision:
            for name, run in m["precision"].items():
                versus = (
                    "reference | reference"
                    if name == "float64"
                    else (
                        f"{run['outliers_max_relative_difference']:.1e} | "
                        f"{run['bulk_w1_over_range']:.1e}"
                    )
                )
                lines.append(
                    f"| {m['model']} | {name} | {_fmt(run['hv_median_s'])} | "
                    f"{run['hvp_count']} | {run['spectrum_s']:.3g} | {versus} |"
                )
    compiled = [m for m in models if "compile" in m]
    if compiled:
        lines += [
            "",
            "torch.compile of the per-batch H v (its first product includes the compile):",
            "",
            "| model | hvp | compile + first product s | eager H v s | compiled H v s "
            "(×grad) | products to repay the compile | rel. diff |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for m in compiled:
            grad_s = m["timings"]["gradient"]["median_s"]
            runs = m["compile"] if isinstance(m["compile"], list) else [m["compile"]]
            for c in runs:  # (a dict: one mode, as written before --compile-modes)
                repay = (
                    "never" if c["products_to_repay"] is None else f"{c['products_to_repay']:.0f}"
                )
                lines.append(
                    f"| {m['model']} | {c['hvp']} | {c['compile_and_first_product_s']:.3g} | "
                    f"{_fmt(c['eager_s'])} | {_fmt(c['compiled_s'])} "
                    f"({c['compiled_s'] / grad_s:.2f}×) | {repay} | "
                    f"{c['relative_difference']:.1e} |"
                )
    return lines


def markdown(report: dict) -> str:
    meta, models = report["meta"], report["models"]
    lines = [
        f"Device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
        f"TF32 {'on' if meta['tf32'] else 'off'}, {meta['threads']} CPU thread(s), "
        f"float32, {meta['date']}. Median of {meta['args']['repeats']} runs after a "
        "warm-up; ratios are to the model's own gradient pass.",
        "",
    ]
    lines += _speed_tables(models)
    lines += ["", "Targets (value / target, ✓ met, ✗ missed):", ""] + _target_table(models)
    lines += [""] + _memory_table(models, meta["device"].startswith("cuda"))
    lines += _spectrum_tables(models)
    errors = {m["model"]: m["errors"] for m in models if m["errors"]}
    if errors:
        lines += ["", "Errors: " + json.dumps(errors)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="mlp,cnn,vgg11,resnet18")
    parser.add_argument(
        "--n",
        type=int,
        default=1437,
        help="examples (digits nets: at most the 1,437 of the train split)",
    )
    parser.add_argument("--batch-size", type=int, default=SPECTRUM["batch_size"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--block-repeats",
        type=int,
        default=2,
        help="timed runs of the block of 10 (no warm-up: the singles "
        "warmed up; each costs ~10 products)",
    )
    parser.add_argument("--peers", action="store_true", help="also PyHessian and curvlinops")
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 in CUDA matmuls and cuDNN convolutions"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; set OMP_NUM_THREADS too)",
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=10,
        help="SGD epochs for the digits nets before measuring (0: as "
        "initialized); the CIFAR-shaped nets are never trained",
    )
    parser.add_argument(
        "--block-modes",
        default=",".join(HVP_MODES),
        help="hvp modes whose block of 10 is timed (default: all)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=10,
        help="block_size of the block products (vmap width; the memory knob)",
    )
    parser.add_argument(
        "--train-lr",
        type=float,
        default=0.05,
        help="SGD learning rate of that training (momentum 0.9)",
    )
    parser.add_argument(
        "--train-epochs-cifar",
        type=int,
        default=0,
        help="SGD epochs for the CIFAR-shaped nets (default: 0, as initialized)",
    )
    parser.add_argument(
        "--separation",
        type=float,
        default=0.0,
        help="class structure of the CIFAR-shaped data: each class's inputs "
        "get separation × a random mean image (default: 0, none)",
    )
    parser.add_argument(
        "--spectrum-models",
        default=None,
        help="models whose whole spectrum is timed, at the paper's settings "
        "and with Krylov deflation (default: all; '' none)",
    )
    parser.add_argument(
        "--outlier-models",
        default="",
        help="models whose top C eigenvalues by top_eigenpairs are checked "
        "against a --reference-tol run (default: none)",
    )
    parser.add_argument("--reference-tol", type=float, default=1e-6)
    parser.add_argument("--reference-max-products", type=int, default=400)
    parser.add_argument(
        "--precision-models",
        default="",
        help="models whose deflated spectrum is compared under float64, "
        "float32 and (CUDA) TF32 (default: none)",
    )
    parser.add_argument(
        "--compile-models",
        default="",
        help="models whose H v is timed eager vs torch.compile (default: none)",
    )
    parser.add_argument(
        "--compile-modes",
        default="auto",
        help="hvp modes timed compiled (default: auto, the device's)",
    )
    parser.add_argument("--deflate", type=int, default=10)
    parser.add_argument("--steps", type=int, default=SPECTRUM["steps"])
    parser.add_argument("--bound-steps", type=int, default=SPECTRUM["bound_steps"])
    parser.add_argument("--iterations", type=int, default=SPECTRUM["iterations"])
    parser.add_argument("--tol", type=float, default=1e-4, help="top_eigenpairs tolerance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.block_modes = [m for m in args.block_modes.split(",") if m]
    for key in ("outlier_models", "precision_models", "compile_models", "compile_modes"):
        setattr(args, key, [m for m in getattr(args, key).split(",") if m])
    args.spectrum_models = (
        args.models
        if args.spectrum_models is None
        else [m for m in args.spectrum_models.split(",") if m]
    )
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    # the gradient pass and the peers; hspec's products set these themselves (tf32=)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = False

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "numpy": np.__version__,
        "hspec": hspec.__version__,
        "pyhessian": version("pyhessian"),
        "curvlinops": version("curvlinops-for-pytorch"),
        "backpack": version("backpack-for-pytorch"),
        "tf32": args.tf32,
        "dtype": "float32",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        with open("/proc/cpuinfo") as file:
            names = [
                line.split(":", 1)[1].strip() for line in file if line.startswith("model name")
            ]
        meta["cpu_name"] = names[0] if names else None
        if device.type == "cpu" and names:
            meta["device_name"] = names[0]
    except OSError:
        meta["cpu_name"] = None
    print(json.dumps({k: meta[k] for k in ("device", "device_name", "torch", "threads")}))
    report = {"meta": meta, "models": []}
    for name in args.models:
        report["models"].append(bench_model(name, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write(report, args)
    return report


def write(report: dict, args) -> None:
    """Write the results so far (after each model, so a long run keeps what it did)."""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))


if __name__ == "__main__":
    main()
