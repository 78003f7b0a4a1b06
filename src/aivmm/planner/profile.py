"""Bounded profiling of one candidate on its real device.

One candidate at a time: the session is created, warmed up and timed until ``budget_s`` or
``max_runs`` (whichever first, and at least ``min_runs``); sessions never run concurrently, so
runtimes never share cores during a measurement. Without a bench the session is closed before the
next one; through a :class:`~aivmm.planner._bench.Bench` it stays open (idle) for the finalist
race and, if it wins, for the runtime. Reported: p50 / p99 / mean latency, the peak memory the
session added, and energy per inference where a counter is readable.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm.backends import Backend, Config, Session
from aivmm.devices import RAPL_ROOT, Device, DeviceKind
from aivmm.models import ModelSpec
from aivmm.planner._values import Measurement
from aivmm.telemetry import energy_counter

if TYPE_CHECKING:
    from aivmm.planner._bench import Bench


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long one candidate may be profiled."""

    seconds: float = 1.0
    warmup_runs: int = 3
    min_runs: int = 5
    max_runs: int = 200

    def __post_init__(self) -> None:
        from aivmm.errors import ConfigError

        if not (self.seconds > 0 and self.min_runs >= 1 and self.max_runs >= self.min_runs and self.warmup_runs >= 0):
            raise ConfigError(f"bad profiling budget {self}")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the process's peak-RSS mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _MemoryProbe:
    """Peak memory a session adds: the runtime allocator's own peak where the backend tracks one
    (torch on CUDA), else the load report on a device, else VmHWM after a reset on Linux."""

    def __init__(self) -> None:
        gc.collect()
        self._base_kb = _status_kb("VmRSS") or 0
        self._hwm = _reset_hwm() and _status_kb("VmHWM") is not None

    def peak(self, session: Session) -> tuple[int, str]:
        tracked = session.peak_memory()
        if tracked is not None and tracked[0] > 0:
            return tracked
        if session.device.kind is not DeviceKind.CPU and session.report.device_memory_bytes:
            return int(session.report.device_memory_bytes), "load-report"
        if self._hwm:
            return max(0, ((_status_kb("VmHWM") or 0) - self._base_kb) * 1024), "vmhwm"
        return max(0, ((_status_kb("VmRSS") or 0) - self._base_kb) * 1024), "rss-delta"


def time_runs(session: Session, feeds: Mapping[str, Any], budget: Budget) -> list[float]:
    """Warm up, then time ``session.run`` calls; returns per-call seconds."""
    for _ in range(budget.warmup_runs):
        session.run(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + budget.seconds
    while len(times) < budget.max_runs and (len(times) < budget.min_runs or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - t0)
    return times


def profile(
    backend: Backend,
    model: ModelSpec,
    device: Device,
    config: Config,
    feeds: Mapping[str, Any],
    budget: Budget | None = None,
    *,
    batch_size: int = 1,
    rapl_root: str = RAPL_ROOT,
    bench: Bench | None = None,
    identity: Hashable = None,
) -> tuple[Measurement, list[Any]]:
    """Load and time one candidate; returns its Measurement and the outputs of its first run (model
    output order) for the accuracy check. The session is closed at the end, unless ``bench`` opened
    it: it then stays there under ``identity`` (closed by the bench if measuring fails)."""
    budget = budget or Budget()
    probe = _MemoryProbe()
    if bench is not None:
        session = bench.open(identity, backend, model, device, config, batch=batch_size)
    else:
        session = backend.load(model, device, config)
    ok = False
    try:
        first = session.run(feeds)
        outputs = list(first.values())  # Session.run returns outputs in model order
        for _ in range(budget.warmup_runs):
            session.run(feeds)
        meter, why = energy_counter(device, rapl_root=rapl_root)
        start_j = meter.read_j() if meter else 0.0
        t0 = time.perf_counter()
        times = time_runs(session, feeds, dataclasses.replace(budget, warmup_runs=0))
        wall = time.perf_counter() - t0
        energy = power = None
        source = why
        if meter is not None:
            spent = meter.read_j() - start_j
            energy = spent / len(times) if times else None
            power = spent / wall if wall > 0 else None
            source = meter.source
        memory, mem_source = probe.peak(session)
        arr = np.asarray(times) * 1e3
        m = Measurement(
            p50_ms=float(np.percentile(arr, 50)),
            p99_ms=float(np.percentile(arr, 99)),
            mean_ms=float(arr.mean()),
            runs=len(times),
            warmup_runs=budget.warmup_runs,
            load_seconds=session.report.seconds,
            memory_bytes=memory,
            memory_source=mem_source,
            energy_j=energy,
            power_w=power,
            energy_source=source,
            batch_size=batch_size,
        )
        ok = True
        return m, outputs
    finally:
        if bench is None:
            session.close()
            del session
            gc.collect()
        elif not ok:
            bench.discard(identity)


@dataclasses.dataclass(frozen=True)
class RaceResult:
    """Per finalist: the median of each round (seconds), every timed call, and the warm-up calls."""

    rounds: list[list[float]]
    calls: list[list[float]]
    warmup: list[list[float]]
    extended: int  # how many times the race was lengthened because the leaders were within the margin

    def medians(self) -> list[float]:
        return [float(np.median(r)) if r else float("inf") for r in self.rounds]


# Two finalists whose medians of rounds are closer than this (relative) are raced longer: on a
# shared machine, drift between rounds is a few percent, so a closer gap is not yet a ranking.
NOISE_MARGIN = 0.03
MAX_EXTENSIONS = 2


def _leaders_close(rounds: list[list[float]], margin: float) -> bool:
    meds = sorted(float(np.median(r)) for r in rounds if r)
    return len(meds) >= 2 and meds[1] - meds[0] < margin * meds[0]


def race_rounds(
    entries: list[tuple[Backend, ModelSpec, Device, Config]],
    feeds: Mapping[str, Any],
    budget: Budget,
    *,
    block: int = 5,
    margin: float = NOISE_MARGIN,
    max_extensions: int = MAX_EXTENSIONS,
    sessions: list[Session] | None = None,
) -> RaceResult:
    """Time finalists against each other, interleaved: all loaded, run strictly one after another
    (never concurrently) in rounds; in each round every finalist runs ``block`` calls, in an order
    that alternates between rounds. The first call of each turn is a warm-up (the previous
    finalist's idle-spinning threads and evicted caches tax it) and counted separately; the round's
    figure is the median of the rest. Drift on a shared machine then hits every finalist alike.
    When the two best medians of rounds are within ``margin``, the race goes on for another budget
    (``max_extensions`` times at most) before it ends. ``sessions``: the finalists' open sessions
    (from the bench that measured them), raced in place and left open; otherwise each entry is
    loaded here and closed at the end."""
    owned = sessions is None
    sessions = [] if sessions is None else list(sessions)
    block = max(2, block)
    try:
        if owned:
            for backend, model, device, config in entries:
                sessions.append(backend.load(model, device, config))
        warmup: list[list[float]] = [[] for _ in sessions]
        for i, s in enumerate(sessions):
            for _ in range(max(1, budget.warmup_runs)):
                t0 = time.perf_counter()
                s.run(feeds)
                warmup[i].append(time.perf_counter() - t0)
        rounds: list[list[float]] = [[] for _ in sessions]
        calls: list[list[float]] = [[] for _ in sessions]
        deadline = time.perf_counter() + budget.seconds
        n = extended = 0
        max_rounds = max(budget.min_runs, budget.max_runs // block)
        while True:
            if n >= budget.min_runs and (n >= max_rounds or time.perf_counter() >= deadline):
                if (
                    extended < max_extensions
                    and n < max_rounds * (1 + max_extensions)
                    and _leaders_close(rounds, margin)
                ):
                    extended += 1
                    deadline = time.perf_counter() + budget.seconds
                    max_rounds += max(budget.min_runs, budget.max_runs // block)
                else:
                    break
            order = range(len(sessions)) if n % 2 == 0 else reversed(range(len(sessions)))
            for i in order:
                turn = []
                for _ in range(block):
                    t0 = time.perf_counter()
                    sessions[i].run(feeds)
                    turn.append(time.perf_counter() - t0)
                warmup[i].append(turn[0])
                calls[i].extend(turn[1:])
                rounds[i].append(float(np.median(turn[1:])))
            n += 1
        return RaceResult(rounds, calls, warmup, extended)
    finally:
        if owned:
            for s in sessions:
                s.close()
            sessions.clear()
            gc.collect()
