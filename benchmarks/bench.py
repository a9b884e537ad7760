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
  same outliers by ``hspec.outliers.top_eigenpairs``, with their product counts.

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
from pathlib import Path

import warnings

import numpy as np
import torch
from torch import nn

# known, harmless: PyHessian's backward(create_graph=True); torch.jit.script deprecation
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hspec  # noqa: E402
from hspec import curvature_operator, spectral_density  # noqa: E402
from hspec.linear_operator import LinearOperator  # noqa: E402
from hspec.outliers import top_eigenpairs  # noqa: E402

DIGITS_MODELS = ("mlp", "cnn")  # 8×8 one-channel nets, run on the real digits train split
COMPONENTS = ("hessian", "gradient_covariance", "prediction_hessian")
SHORT = {"hessian": "H", "gradient_covariance": "G", "prediction_hessian": "R"}


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

    def __enter__(self) -> "RssSampler":
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
        memory = {"peak_mb": peak / 2**20, "peak_above_before_mb": (peak - before) / 2**20,
                  "memory_kind": "torch.cuda.max_memory_allocated"}
    else:
        available = sampler.available
        memory = {"peak_mb": sampler.peak / 2**20 if available else None,
                  "peak_above_before_mb": (sampler.peak - sampler.before) / 2**20
                  if available else None,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "memory_kind": "process RSS sampled every 2 ms (/proc/self/statm); "
                                 "ru_maxrss: the process's high-water mark so far"}
    return {"median_s": statistics.median(times), "times_s": times, "warmup": warmup,
            **memory, "result": result}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- data and models ------------------------------------------------------------------
def load_data(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Digits nets: the real digits train split (its first n examples); the others:
    CIFAR-shaped random data, 3×32×32 Gaussian inputs with uniform labels of 10 classes."""
    if name in DIGITS_MODELS:
        from hspec.data import load_split

        x, y = load_split("digits", "train")
        return x[:n], y[:n], f"digits train split, first {min(n, len(x))} of {len(x)}"
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return x, y, "random CIFAR-shaped data (3×32×32 Gaussian inputs, 10 uniform labels)"


def build_model(name: str, x: torch.Tensor, y: torch.Tensor, epochs: int,
                batch_size: int, seed: int, device: torch.device) -> tuple[nn.Module, dict]:
    """The network with seeded weights; ``epochs`` of plain SGD on (x, y) first, so the
    spectrum has the trained shape (bulk plus outliers). Returned in eval mode."""
    from hspec.models import create

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create(name, x.shape[1], 10).to(device)
    info = {"train_epochs": epochs}
    if epochs:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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

    runner = hessian(model, nn.CrossEntropyLoss(), dataloader=batches,
                     cuda=device.type == "cuda")
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
    hess = HessianLinearOperator(model, loss, params, batches, check_deterministic=False,
                                 num_data=n)
    ggn = GGNLinearOperator(model, loss, params, batches, check_deterministic=False,
                            num_data=n)
    return (lambda v: hess @ v), (lambda v: ggn @ v)


# -- one model ------------------------------------------------------------------------
def bench_model(name: str, args, device: torch.device) -> dict:
    n = args.n if name not in DIGITS_MODELS else min(args.n, 1437)
    x, y, data_note = load_data(name, n, args.seed)
    n = len(y)
    x, y = x.to(device), y.to(device)
    epochs = args.train_epochs if name in DIGITS_MODELS else 0
    model, train_info = build_model(name, x, y, epochs, args.batch_size, args.seed, device)
    batches = list(zip(x.split(args.batch_size), y.split(args.batch_size)))
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    out: dict = {"model": name, "params": p, "n": n, "batch_size": args.batch_size,
                 "data": data_note, **train_info, "timings": {}, "agreement": {},
                 "errors": {}}
    timings = out["timings"]
    log = (lambda *a: print(f"[{name}]", *a, flush=True))
    log(f"p = {p:,}, N = {n}, batch {args.batch_size}, {data_note}")

    def record(key: str, fn, repeats: int = args.repeats, warmup: int = 1):
        result = measure(fn, device, repeats, warmup)
        value = result.pop("result")
        timings[key] = result
        log(f"{key}: {result['median_s']:.4g} s (median of {repeats})")
        return value

    record("gradient", lambda: gradient_pass(model, batches))
    grad_s = timings["gradient"]["median_s"]

    generator = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(p, generator=generator).to(device)
    ops = {c: curvature_operator(model, (x, y), c, batch_size=args.batch_size,
                                 device=device) for c in COMPONENTS}
    results = {c: record(c, lambda c=c: ops[c].matvec(v)) for c in COMPONENTS}
    out["agreement"]["H_vs_G_plus_R"] = relative_difference(
        results["gradient_covariance"] + results["prediction_hessian"], results["hessian"])

    block = torch.randn(p, 10, generator=generator).to(device)
    block[:, 0] = v
    got = record("hessian_block10", lambda: ops["hessian"].matmat(block),
                 repeats=args.block_repeats, warmup=0)
    out["agreement"]["block10_column0_vs_matvec"] = relative_difference(got[:, 0],
                                                                        results["hessian"])
    timings["hessian_block10"]["ten_singles_s"] = 10 * timings["hessian"]["median_s"]
    timings["hessian_block10"]["ten_singles_note"] = "10 × the median single H v"

    if args.peers:
        try:
            product = pyhessian_product(model, batches, device)
            got = record("pyhessian_hessian", lambda: product(v))
            out["agreement"]["pyhessian_vs_hspec_H"] = relative_difference(
                got, results["hessian"])
        except Exception as error:  # noqa: BLE001 -- a broken peer is reported, not fatal
            out["errors"]["pyhessian"] = "".join(traceback.format_exception_only(error))
            log("PyHessian failed:", out["errors"]["pyhessian"])
        try:
            hess, ggn = curvlinops_products(model, batches, n)
            got = record("curvlinops_hessian", lambda: hess(v))
            out["agreement"]["curvlinops_vs_hspec_H"] = relative_difference(
                got, results["hessian"])
            got = record("curvlinops_ggn", lambda: ggn(v))
            out["agreement"]["curvlinops_ggn_vs_hspec_G"] = relative_difference(
                got, results["gradient_covariance"])
        except Exception as error:  # noqa: BLE001
            out["errors"]["curvlinops"] = "".join(traceback.format_exception_only(error))
            log("curvlinops failed:", out["errors"]["curvlinops"])
    model.zero_grad(set_to_none=True)

    for key, t in timings.items():
        t["ratio_to_gradient"] = t["median_s"] / grad_s
    out["targets"] = targets(timings)

    if name in args.spectrum_models:
        out["spectrum"], out["outliers"] = bench_spectrum(ops["hessian"], args, log)
    return out


def targets(timings: dict) -> dict:
    """The speed targets, each with its measured value and whether it is met."""
    found: dict = {}
    h = timings["hessian"]["median_s"]
    found["H_over_gradient"] = {"value": timings["hessian"]["ratio_to_gradient"],
                                "target": 2.5}
    peers = [timings[k]["median_s"] for k in ("pyhessian_hessian", "curvlinops_hessian")
             if k in timings]
    if peers:
        found["H_over_faster_peer"] = {"value": h / min(peers), "target": 0.75}
    found["G_over_gradient"] = {
        "value": timings["gradient_covariance"]["ratio_to_gradient"], "target": 2.0}
    found["R_over_H"] = {"value": timings["prediction_hessian"]["median_s"] / h,
                         "target": 1.0}
    block = timings["hessian_block10"]
    found["block10_over_ten_singles"] = {
        "value": block["median_s"] / block["ten_singles_s"], "target": 0.6}
    for item in found.values():
        item["met"] = bool(item["value"] <= item["target"])
    return found


def bench_spectrum(op, args, log) -> tuple[dict, dict]:
    """One spectrum with deflation (Alg. 4, 5, 3) and the same outliers by
    top_eigenpairs."""
    settings = dict(deflate=args.deflate, steps=args.steps, bound_steps=args.bound_steps,
                    iterations=args.iterations, seed=args.seed)
    synchronize(op.device)
    start = time.perf_counter()
    result = spectral_density(op, **settings)
    synchronize(op.device)
    seconds = time.perf_counter() - start
    spectrum = {"settings": settings, "hvp_count": result.hvp_count, "seconds": seconds,
                "outliers": result.outliers.tolist(),
                "lambda_min": result.lambda_min, "lambda_max": result.lambda_max}
    log(f"spectrum: {result.hvp_count} products, {seconds:.4g} s")

    counted = LinearOperator.wrap(op)
    start = time.perf_counter()
    values, _, products = top_eigenpairs(counted, args.deflate, tol=args.tol,
                                         generator=torch.Generator().manual_seed(args.seed))
    synchronize(op.device)
    seconds = time.perf_counter() - start
    reference = result.outliers
    outliers = {"tol": args.tol, "products": products, "seconds": seconds,
                "values": values.tolist(),
                "max_relative_difference_to_alg5": float(
                    np.max(np.abs(values - reference) / np.abs(reference))),
                "alg5_products": args.deflate * args.iterations}
    log(f"top_eigenpairs: {products} products, {seconds:.4g} s, max rel. diff to Alg. 5 "
        f"{outliers['max_relative_difference_to_alg5']:.2e}")
    return spectrum, outliers


# -- output ---------------------------------------------------------------------------
def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
             f"TF32 {'on' if meta['tf32'] else 'off'}, {meta['threads']} CPU thread(s), "
             f"float32, {meta['date']}. Median of {meta['args']['repeats']} runs after a "
             "warm-up; ratios are to the model's own gradient pass.", ""]
    lines += ["| model | params | N | gradient s | H v s (×grad) | G v s (×grad) | "
              "R v s (×grad) | block of 10 / 10 singles | PyHessian H v s (×grad) | "
              "curvlinops H v s (×grad) | curvlinops GGN v s (×grad) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        t = m["timings"]

        def cell(key):
            if key not in t:
                return "–"
            return f"{_fmt(t[key]['median_s'])} ({t[key]['ratio_to_gradient']:.2f}×)"

        block = t["hessian_block10"]["median_s"] / t["hessian_block10"]["ten_singles_s"]
        lines.append(f"| {m['model']} | {m['params']:,} | {m['n']} | "
                     f"{_fmt(t['gradient']['median_s'])} | {cell('hessian')} | "
                     f"{cell('gradient_covariance')} | {cell('prediction_hessian')} | "
                     f"{block:.2f} | {cell('pyhessian_hessian')} | "
                     f"{cell('curvlinops_hessian')} | {cell('curvlinops_ggn')} |")
    lines += ["", "Targets (value / target, ✓ met, ✗ missed):", "",
              "| model | H/grad ≤ 2.5 | H/faster peer ≤ 0.75 | G/grad ≤ 2 | R/H ≤ 1 | "
              "block/10 singles ≤ 0.6 |", "|---|---|---|---|---|---|"]
    for m in report["models"]:
        cells = []
        for key in ("H_over_gradient", "H_over_faster_peer", "G_over_gradient", "R_over_H",
                    "block10_over_ten_singles"):
            item = m["targets"].get(key)
            cells.append("–" if item is None else
                         f"{item['value']:.2f} {'✓' if item['met'] else '✗'}")
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    mem_kind = "peak GPU memory allocated" if meta["device"].startswith("cuda") else \
        "peak RSS sampled during the runs, above the RSS before them"
    lines += ["", "Agreement (‖a − b‖/‖b‖ on the same vector) and memory "
              f"({mem_kind}, MB):",
              "", "| model | H vs G+R | block col. vs matvec | PyHessian vs hspec H | "
              "curvlinops vs hspec H | curvlinops GGN vs hspec G | mem grad | mem H | "
              "mem G | mem R | mem PyHessian | mem curvlinops H |",
              "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        a, t = m["agreement"], m["timings"]
        key = "peak_mb" if meta["device"].startswith("cuda") else "peak_above_before_mb"

        def mem(k):
            return "–" if k not in t or t[k].get(key) is None else f"{t[k][key]:.0f}"

        lines.append(
            f"| {m['model']} | {_fmt(a.get('H_vs_G_plus_R'), 2)} | "
            f"{_fmt(a.get('block10_column0_vs_matvec'), 2)} | "
            f"{_fmt(a.get('pyhessian_vs_hspec_H'), 2)} | "
            f"{_fmt(a.get('curvlinops_vs_hspec_H'), 2)} | "
            f"{_fmt(a.get('curvlinops_ggn_vs_hspec_G'), 2)} | {mem('gradient')} | "
            f"{mem('hessian')} | {mem('gradient_covariance')} | "
            f"{mem('prediction_hessian')} | {mem('pyhessian_hessian')} | "
            f"{mem('curvlinops_hessian')} |")
    spectra = [m for m in report["models"] if "spectrum" in m]
    if spectra:
        lines += ["", "Whole spectrum (`spectral_density`, deflation by Alg. 5) and the "
                  "same outliers by `top_eigenpairs`:", "",
                  "| model | settings | spectrum products | spectrum s | of which Alg. 5 | "
                  "top_eigenpairs products | top_eigenpairs s | max rel. diff to Alg. 5 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for m in spectra:
            s, o = m["spectrum"], m["outliers"]
            st = s["settings"]
            lines.append(
                f"| {m['model']} | C={st['deflate']}, M={st['steps']}, "
                f"M0={st['bound_steps']}, T={st['iterations']}, tol={o['tol']:g} | "
                f"{s['hvp_count']} | {s['seconds']:.3g} | {o['alg5_products']} | "
                f"{o['products']} | {o['seconds']:.3g} | "
                f"{o['max_relative_difference_to_alg5']:.1e} |")
    errors = {m["model"]: m["errors"] for m in report["models"] if m["errors"]}
    if errors:
        lines += ["", "Errors: " + json.dumps(errors)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,vgg11,resnet18")
    parser.add_argument("--n", type=int, default=1437,
                        help="examples (digits nets: at most the 1,437 of the train split)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-repeats", type=int, default=2,
                        help="timed runs of the block of 10 (no warm-up: the singles "
                             "warmed up; each costs ~10 products)")
    parser.add_argument("--peers", action="store_true",
                        help="also PyHessian and curvlinops")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in CUDA matmuls and cuDNN convolutions")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; set OMP_NUM_THREADS "
                             "too)")
    parser.add_argument("--train-epochs", type=int, default=10,
                        help="SGD epochs for the digits nets before measuring (0: as "
                             "initialized); the CIFAR-shaped nets are never trained")
    parser.add_argument("--spectrum-models", default=None,
                        help="models whose whole spectrum is timed (default: all; '' none)")
    parser.add_argument("--deflate", type=int, default=10)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--bound-steps", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=256)
    parser.add_argument("--tol", type=float, default=1e-4, help="top_eigenpairs tolerance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.spectrum_models = args.models if args.spectrum_models is None else \
        [m for m in args.spectrum_models.split(",") if m]
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                              else device.index)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = False

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "numpy": np.__version__, "hspec": hspec.__version__,
        "pyhessian": version("pyhessian"), "curvlinops": version("curvlinops-for-pytorch"),
        "backpack": version("backpack-for-pytorch"), "tf32": args.tf32, "dtype": "float32",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        with open("/proc/cpuinfo") as file:
            names = [line.split(":", 1)[1].strip() for line in file
                     if line.startswith("model name")]
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
