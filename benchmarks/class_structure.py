"""Benchmark the class/cross-class parts of G against G v (hspec.curvature.class_structure).

One product of ``class_g1`` (G1, the class means) and of ``class_within`` (G_within, the
bulk) against one G v (``gradient_covariance``) of ``hspec.curvature_operator``, on the
same data, model and vector, in one process, on the CPU:

* the digits nets ``mlp`` and ``cnn`` of ``hspec.pipeline.models`` on digits train images;
* VGG11 on random CIFAR-shaped data (3×32×32) with 10 classes, and with 100 classes (the
  C = 100 memory check: the parts need O(p + one batch) memory whatever C is).

Each time is the median of a case's timed products after one warm-up product. Peak memory
is the resident-set size sampled every 2 ms during the timed products, above the RSS
before them (``/proc/self/statm``); the target is at most 1.5× a G v in time and the
same O(p) memory. Writes the raw numbers as JSON (``--out``) and a table (``--markdown``).

    python benchmarks/class_structure.py --out benchmarks/results-cpu-class-structure.json \\
        --markdown benchmarks/results-cpu-class-structure.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hspec  # noqa: E402
from hspec import curvature_operator  # noqa: E402
from hspec.pipeline import data, models  # noqa: E402

COMPONENTS = ("gradient_covariance", "class_g1", "class_within")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """The resident-set size of this process now, bytes."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * PAGE


class PeakRSS:
    """The highest RSS sampled every 2 ms while the block runs, above the RSS at entry."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.base


def problem(name: str, n: int, classes: int):
    """(model, (inputs, targets)) of a benchmark case, seeded."""
    torch.manual_seed(0)
    if name in ("mlp", "cnn"):
        inputs, targets = data.load_split("digits", "train")
        return models.create(name, 1, 10), (inputs[:n], targets[:n])
    inputs = torch.randn(n, 3, 32, 32)
    targets = torch.arange(n) % classes
    return models.create("vgg11", 3, classes), (inputs, targets)


def measure(name: str, n: int, batch: int, classes: int, repeats: int) -> dict:
    model, pair = problem(name, n, classes)
    row = {"model": name, "classes": classes, "n": n, "batch_size": batch}
    v = None
    for component in COMPONENTS:
        op = curvature_operator(model, pair, component, batch_size=batch)
        row["n_params"] = op.dim
        if v is None:
            v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1))
        op.matvec(v)  # warm-up
        times = []
        with PeakRSS() as memory:
            for _ in range(repeats):
                start = time.perf_counter()
                op.matvec(v)
                times.append(time.perf_counter() - start)
        row[component] = {"seconds": statistics.median(times), "peak_rss_mb": memory.extra / 2**20}
    base = row["gradient_covariance"]
    for component in COMPONENTS[1:]:
        row[component]["time_ratio"] = row[component]["seconds"] / base["seconds"]
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# One product of G1 and of G_within against one G v (CPU)",
        "",
        f"hspec {meta['hspec']}, torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['machine']}; median of `repeats` products after a warm-up (3 for the "
        "digits nets, 1 for VGG11). "
        "Peak memory: RSS above the RSS before the timed products, sampled every 2 ms. "
        "Written by `benchmarks/class_structure.py`.",
        "",
        "| model | C | N (batch) | p | G v s | G1 v s (× G v) | G_within v s (× G v) "
        "| peak MB: G v / G1 v / G_within v |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g, g1, w = (r[c] for c in COMPONENTS)
        lines.append(
            f"| {r['model']} | {r['classes']} | {r['n']} ({r['batch_size']}) | {r['n_params']:,} "
            f"| {g['seconds']:.3f} | {g1['seconds']:.3f} ({g1['time_ratio']:.2f}) "
            f"| {w['seconds']:.3f} ({w['time_ratio']:.2f}) "
            f"| {g['peak_rss_mb']:.0f} / {g1['peak_rss_mb']:.0f} / {w['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


#: name: (model, N, batch size, C, timed products); VGG11 on one CPU thread takes ~20 s
#: per G v at N = 32, so its cases time one product after the warm-up
CASES = {
    "mlp": ("mlp", 1437, 1437, 10, 3),
    "cnn": ("cnn", 512, 256, 10, 3),
    "vgg11": ("vgg11", 32, 32, 10, 1),
    "vgg11-c100": ("vgg11", 50, 50, 100, 1),  # C = 100 (half the classes empty: C is the width)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of CASES")
    parser.add_argument(
        "--rows", type=Path, help="JSON lines of rows measured before, kept in the output"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.rows.read_text().splitlines()] if args.rows else []
    for case in args.cases.split(","):
        name, n, batch, classes, repeats = CASES[case]
        rows.append({**measure(name, n, batch, classes, repeats), "repeats": repeats})
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "hspec": hspec.__version__,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.markdown.write_text(markdown(rows, meta))


if __name__ == "__main__":
    main()
