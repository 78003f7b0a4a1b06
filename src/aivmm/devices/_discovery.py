"""Discovery: run every registered probe concurrently under one deadline, add simulated devices,
then ask each available backend which devices it drives.

Each probe runs in a daemon thread so a stalled one (a hung NVML call) costs the caller at most
the deadline and never blocks interpreter exit; it is reported "absent: timed out" and, if it
finishes later, its answer is kept for the next call. Real probe answers are cached for the
process; ``refresh=True`` asks again (memory free changes, the hardware does not).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aivmm.devices import _registry, _simulated
from aivmm.devices._runtimes import runtimes_for
from aivmm.devices._types import Device, ProbeReport
from aivmm.errors import ConfigError, SimulationSpecError

# Asking backends is separate from probing: the first call imports runtimes (torch takes seconds),
# so it has its own, longer deadline; a backend still importing at that deadline is waited for up to
# RUNTIMES_IMPORT_TIMEOUT_S (torch took over 15 s on a loaded 2-core machine, and was dropped).
RUNTIMES_TIMEOUT_S = 15.0
RUNTIMES_IMPORT_TIMEOUT_S = 120.0

_lock = threading.Lock()
_cache: dict[str, ProbeReport] = {}
_running: dict[str, threading.Thread] = {}


@dataclasses.dataclass(frozen=True)
class DiscoveryReport:
    """The devices found and, for each probe, what it found or why it found nothing."""

    devices: tuple[Device, ...]
    probes: tuple[ProbeReport, ...]
    seconds: float

    def probe(self, name: str) -> ProbeReport:
        for report in self.probes:
            if report.probe == name:
                return report
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [d.to_json() for d in self.devices],
            "probes": [p.to_json() for p in self.probes],
            "seconds": round(self.seconds, 4),
        }


def discover_report(
    simulate: _simulated.SimulateSpec = None,
    *,
    timeout_s: float = 2.0,
    include_runtimes: bool = True,
    refresh: bool = False,
    probes: Iterable[str] | None = None,
) -> DiscoveryReport:
    """Discover devices and explain each probe's outcome.

    ``simulate``: a spec path, a list of device dicts, or None to read ``AIVMM_SIMULATE``.
    ``probes``: names of the probes to run (default: every registered probe).
    Raises SimulationSpecError for a malformed spec and ConfigError for bad arguments; probe
    failures never raise.
    """
    if not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    start = time.perf_counter()
    # User input is validated before any probe runs, so a bad spec fails fast.
    spec = simulate if simulate is not None else _simulated.spec_from_env()
    simulated_devices = _simulated.load(spec)

    wanted = list(probes) if probes is not None else _registry.names()
    reports = _run_probes(wanted, timeout_s, refresh)
    real = [d for r in reports for d in r.devices]
    real_ids = {d.id for d in real}
    for device in simulated_devices:
        if device.id in real_ids:
            raise SimulationSpecError(
                os.fspath(spec) if isinstance(spec, str | os.PathLike) else "<simulate argument>",
                f"{device.id}.id",
                "is the id of a real device on this machine; pick another index",
            )
    if spec is not None:
        reason = "" if simulated_devices else "absent: the simulation spec lists no device"
        reports.append(ProbeReport("simulated", simulated_devices, reason))
    devices = [*real, *simulated_devices]
    if include_runtimes:
        devices, note = _with_runtimes(devices)
        reports.append(ProbeReport("runtimes", (), note))
    return DiscoveryReport(tuple(devices), tuple(reports), time.perf_counter() - start)


def discover(
    simulate: _simulated.SimulateSpec = None,
    *,
    timeout_s: float = 2.0,
    include_runtimes: bool = True,
    refresh: bool = False,
) -> tuple[Device, ...]:
    """Every device on this machine plus simulated ones (see :func:`discover_report`)."""
    return discover_report(simulate, timeout_s=timeout_s, include_runtimes=include_runtimes, refresh=refresh).devices


def clear_cache() -> None:
    """Forget cached probe answers (the next discovery asks the hardware again)."""
    with _lock:
        _cache.clear()


def _run_probes(names: Sequence[str], timeout_s: float, refresh: bool) -> list[ProbeReport]:
    results: dict[str, ProbeReport] = {}
    waiting: dict[str, tuple[threading.Thread, bool]] = {}  # name -> (thread, started by this call)
    with _lock:
        for name in names:
            running = _running.get(name)
            if running is not None and running.is_alive():
                # Another call (concurrent, or one that timed out) is already asking: wait for the same answer.
                waiting[name] = (running, False)
            elif not refresh and name in _cache:
                results[name] = _cache[name]
            else:
                thread = threading.Thread(target=_run_one, args=(name,), name=f"aivmm-probe-{name}", daemon=True)
                _running[name] = thread
                waiting[name] = (thread, True)
    for thread, new in waiting.values():
        if new:
            thread.start()
    deadline = time.monotonic() + timeout_s
    for name, (thread, new) in waiting.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        with _lock:
            if not thread.is_alive() and name in _cache:
                results[name] = _cache[name]
            else:
                since = "" if new else " (stalled since an earlier discovery)"
                results[name] = ProbeReport(
                    name, reason=f"absent: timed out after {timeout_s:g} s{since}", seconds=timeout_s
                )
    return [results[n] for n in names]


def _run_one(name: str) -> None:
    start = time.perf_counter()
    try:
        report = _registry.resolve(name)()
        if not isinstance(report, ProbeReport):
            report = ProbeReport(name, reason=f"absent: probe returned {type(report).__name__}, not a ProbeReport")
    except BaseException as exc:  # probes must not raise; a plugin that does is reported, not propagated
        report = ProbeReport(name, reason=f"absent: probe raised {type(exc).__name__}: {exc}")
    report = dataclasses.replace(report, probe=name, seconds=time.perf_counter() - start)
    with _lock:
        _cache[name] = report


def _with_runtimes(devices: list[Device]) -> tuple[list[Device], str]:
    found, notes = runtimes_for(devices, RUNTIMES_TIMEOUT_S, RUNTIMES_IMPORT_TIMEOUT_S)
    return [d.with_(runtimes=tuple(found.get(d.id, ()))) for d in devices], "; ".join(notes)
