"""Resumable spectra: the state of one ``spectral_density`` call, saved atomically.

A spectrum is a sequence of stages (symmetry probe, NORMALIZATION, LOWRANKDEFLATION, one
Lanczos run per start vector). A finished stage stores its result; a running Lanczos or
subspace iteration stores its partial state (α, β, the two current vectors, or the
current block Q) at most every ``interval`` seconds. With each save go the random
generator's state and the product count, so a killed run restarted with the same
settings resumes where it stopped and ends with exactly the numbers of an uninterrupted
run (the operator being deterministic). Each save also records the wall-clock seconds
spent so far (by every earlier part too) and the UTC time the first part started, so a
resumed run reports its total time (:attr:`SpectrumCheckpoint.earlier`,
:attr:`SpectrumCheckpoint.started`).

A checkpoint resumes only the identical computation: its fingerprint holds the file's
``format`` (a checkpoint of an older format, e.g. one whose deflation stage lacks the
outliers' residuals, is discarded), the settings, ``dim``, the caller's ``key`` (e.g.
the model file's hash, the data, the component) and one *probe*: ‖A v‖ and a few entries
of A v for a fixed vector drawn from its own seeded generator. On resume the probe is
recomputed; if anything differs (probe beyond a relative 1e-6), the file is discarded
with a logged warning naming it and what differed, and the computation starts over. The
probe product is not counted in ``hvp_count`` and draws nothing from the main generator,
so results and counts are those of a run without it.

The file is written with :func:`hspec.atomic.atomic_write` (a temporary sibling renamed
into place, never half-written, removed on failure; a failed write is one ``HspecError``
naming the file) and read back with ``torch.load(weights_only=True)``: tensors, dicts,
lists and numbers only, no pickled objects.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from hspec.atomic import atomic_write
from hspec.errors import HspecError
from hspec.numerics.provenance import utc_now

log = logging.getLogger(__name__)

PROBE_SEED = 0x5EC7
PROBE_ENTRIES = 8
PROBE_TOLERANCE = 1e-6
#: 2: the deflation stage holds the outliers' residuals; times are saved
FORMAT = 2


def probe(op) -> list[float]:
    """‖A v‖ then ``PROBE_ENTRIES`` evenly spaced entries of A v for a fixed Gaussian v
    (its own generator); ``op.hvp_count`` is left unchanged."""
    count = op.hvp_count
    product = op.matvec(op.randn(generator=torch.Generator().manual_seed(PROBE_SEED)))
    op.hvp_count = count
    index = torch.linspace(0, op.dim - 1, PROBE_ENTRIES).round().long().to(product.device)
    return [float(torch.linalg.vector_norm(product))] + product[index].tolist()


def _probe_differs(saved, now: list[float]) -> bool:
    if not isinstance(saved, list) or len(saved) != len(now):
        return True
    scale = PROBE_TOLERANCE * max(abs(now[0]), math.ulp(0.0))
    return any(not abs(a - b) <= scale for a, b in zip(saved, now))


def _differences(found, fingerprint: dict) -> list[str]:
    """What differs between a saved fingerprint and the current one, e.g. ``key.model``."""
    if not isinstance(found, Mapping):
        return ["not a fingerprint"]
    out = []
    for part in ("settings", "key"):
        old, new = found.get(part) or {}, fingerprint[part]
        out += [
            f"{part}.{name} {old.get(name)!r} -> {new.get(name)!r}"
            for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name)
        ]
    if found.get("format", 1) != fingerprint["format"]:
        out.append(f"format {found.get('format', 1)!r} -> {fingerprint['format']!r}")
    if found.get("dim") != fingerprint["dim"]:
        out.append(f"dim {found.get('dim')!r} -> {fingerprint['dim']!r}")
    if _probe_differs(found.get("probe"), fingerprint["probe"]):
        out.append("the probe product A v (another operator)")
    return out


class SpectrumCheckpoint:
    """The saved stages of one spectrum computation at ``path``."""

    def __init__(
        self,
        path: str | os.PathLike,
        settings: dict,
        op,
        key: Mapping | None = None,
        interval: float = 60.0,
    ) -> None:
        """``op``: the operator (a :class:`hspec.numerics.linear_operator.LinearOperator`), probed
        with one uncounted product; ``key``: the caller's identity of the computation."""
        self.path = Path(path)
        self.device = op.device
        self.interval = interval
        self._last_save = time.monotonic()
        fingerprint = {
            "format": FORMAT,
            "settings": dict(settings),
            "dim": op.dim,
            "key": dict(key or {}),
            "probe": probe(op),
        }
        self.state = self._load(fingerprint) or {"fingerprint": fingerprint, "stages": {}}
        self._opened = time.monotonic()
        #: wall-clock seconds spent by the earlier parts of this computation (0 if fresh)
        self.earlier = float(self.state.get("seconds", 0.0))
        #: UTC ISO time the first part started
        self.started = str(self.state.get("started") or utc_now())

    def elapsed(self) -> float:
        """Seconds spent on this computation so far, earlier parts included."""
        return self.earlier + time.monotonic() - self._opened

    def _load(self, fingerprint: dict) -> dict | None:
        """The saved state if it is of this very computation; otherwise None (and a
        warning, the stale file deleted). An unreadable file is an error naming it."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True, map_location=self.device)
            found = state["fingerprint"]
        except Exception as error:
            raise HspecError(
                f"{self.path}: not a readable spectrum checkpoint ({error}); "
                "delete it to start over"
            ) from error
        differences = _differences(found, fingerprint)
        if differences:
            log.warning(
                "%s: discarded, a checkpoint of another computation (%s); starting over",
                self.path,
                "; ".join(differences),
            )
            self.path.unlink(missing_ok=True)
            return None
        return state

    def restore(self, generator: torch.Generator) -> int:
        """Reset the generator to its saved state; return the saved product count."""
        if "generator" in self.state:
            generator.set_state(self.state["generator"].cpu())
        return int(self.state.get("hvp_count", 0))

    def finished(self, stage: str):
        return self.state["stages"].get(stage)

    def partial(self, stage: str):
        return self.state["stages"].get(stage + "/partial")

    def save(
        self,
        stage: str,
        value,
        generator: torch.Generator,
        hvp_count: int,
        *,
        partial: bool = False,
    ) -> None:
        """Record a stage's result (always written) or partial state (rate-limited)."""
        now = time.monotonic()
        if partial and now - self._last_save < self.interval:
            return
        stages = self.state["stages"]
        stages.pop(stage + "/partial", None)
        stages[stage + "/partial" if partial else stage] = value
        self.state["generator"] = generator.get_state()
        self.state["hvp_count"] = hvp_count
        self.state["seconds"] = self.elapsed()
        self.state["started"] = self.started
        self._write()
        self._last_save = now

    def _write(self) -> None:
        """Write the state atomically; a failure is one HspecError naming the file."""
        atomic_write(self.path, lambda file: torch.save(self.state, file), "spectrum checkpoint")

    def stage_runner(self, generator: torch.Generator, op) -> Callable:
        """``run(stage, compute)``: the stored result, or ``compute(partial, snapshot)``
        whose result is stored; ``snapshot(state)`` saves partial state."""

        def run(stage: str, compute: Callable, encode=lambda x: x, decode=lambda x: x):
            done = self.finished(stage)
            if done is not None:
                return decode(done)
            snapshot = lambda value: self.save(stage, value, generator, op.hvp_count, partial=True)
            result = compute(self.partial(stage), snapshot)
            self.save(stage, encode(result), generator, op.hvp_count)
            return result

        return run

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
