"""Bounded, adaptive timing shared by the capability benchmarks.

Sizes grow until one run is long enough to time well, and repetitions stop at a time budget, so a
slow device gets small problems and a fast one large ones and neither runs past its share of the
~30 s per device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


class Budget:
    """A wall-clock allowance that sub-measurements draw from."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def share(self, parts: int) -> float:
        return self.left() / max(1, parts)


def median_seconds(run: Callable[[], float], *, budget_s: float, min_reps: int = 3, max_reps: int = 30) -> float:
    """Median of ``run()`` (which returns the seconds of one repetition) after one warm-up run,
    repeating until ``budget_s`` is spent (at least ``min_reps``, at most ``max_reps`` times)."""
    run()  # warm-up: first-call costs (allocation, kernel selection, JIT) are not throughput
    samples: list[float] = []
    end = time.monotonic() + budget_s
    while len(samples) < max_reps and (len(samples) < min_reps or time.monotonic() < end):
        samples.append(run())
    return statistics.median(samples)


def wall(fn: Callable[[], object]) -> Callable[[], float]:
    """A ``run`` for :func:`median_seconds` that times ``fn`` with the host clock."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def grow(time_at: Callable[[int], float], sizes: Sequence[int], *, target_s: float, budget: Budget) -> int:
    """The first size whose single run takes at least ``target_s`` (or the largest tried)."""
    chosen = sizes[0]
    for size in sizes:
        if budget.left() <= 0:
            break
        chosen = size
        if time_at(size) >= target_s:
            break
    return chosen
