"""Resumable spectra: the state of one ``spectral_density`` call, saved atomically.

A spectrum is a sequence of stages (symmetry probe, NORMALIZATION, LOWRANKDEFLATION, one
Lanczos run per start vector). A finished stage stores its result; a running Lanczos or
subspace iteration stores its partial state (α, β, the two current vectors, or the
current block Q) at most every ``interval`` seconds. With each save go the random
generator's state and the product count, so a killed run restarted with the same
settings resumes where it stopped and ends with exactly the numbers of an uninterrupted
run (the operator being deterministic).

The file is written to a temporary sibling and renamed into place (never half-written)
and read back with ``torch.load(weights_only=True)``: tensors, dicts, lists and numbers
only, no pickled objects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hspec.errors import HspecError


class SpectrumCheckpoint:
    """The saved stages of one spectrum computation at ``path``."""

    def __init__(self, path: str | os.PathLike, settings: dict, dim: int,
                 device: torch.device | str = "cpu", interval: float = 60.0) -> None:
        self.path = Path(path)
        self.device = device
        self.interval = interval
        self._last_save = time.monotonic()
        fingerprint = {"settings": dict(settings), "dim": dim}
        self.state = self._load(fingerprint) or {"fingerprint": fingerprint, "stages": {}}

    def _load(self, fingerprint: dict) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True, map_location=self.device)
            found = state["fingerprint"]
        except Exception as error:
            raise HspecError(f"{self.path}: not a readable spectrum checkpoint ({error}); "
                             "delete it to start over") from error
        if found != fingerprint:
            raise HspecError(f"{self.path}: checkpoint of another computation ({found}, "
                             f"now {fingerprint}); delete it to start over")
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

    def save(self, stage: str, value, generator: torch.Generator, hvp_count: int, *,
             partial: bool = False) -> None:
        """Record a stage's result (always written) or partial state (rate-limited)."""
        now = time.monotonic()
        if partial and now - self._last_save < self.interval:
            return
        stages = self.state["stages"]
        stages.pop(stage + "/partial", None)
        stages[stage + "/partial" if partial else stage] = value
        self.state["generator"] = generator.get_state()
        self.state["hvp_count"] = hvp_count
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)
        self._last_save = now

    def stage_runner(self, generator: torch.Generator, op) -> Callable:
        """``run(stage, compute)``: the stored result, or ``compute(partial, snapshot)``
        whose result is stored; ``snapshot(state)`` saves partial state."""
        def run(stage: str, compute: Callable, encode=lambda x: x, decode=lambda x: x):
            done = self.finished(stage)
            if done is not None:
                return decode(done)
            snapshot = lambda value: self.save(stage, value, generator, op.hvp_count,
                                               partial=True)
            result = compute(self.partial(stage), snapshot)
            self.save(stage, encode(result), generator, op.hvp_count)
            return result
        return run

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
