"""Measured device capability: matmul throughput per precision, memory bandwidth and, for
discrete devices, host-to-device bandwidth with pinned and pageable memory.

Figures are measured, never looked up in a datasheet: when nothing was measured :func:`figures`
returns None and the planner says so. Results are cached on disk (``AIVMM_CACHE_DIR``, else
``$XDG_CACHE_HOME/aivmm``, else ``~/.cache/aivmm``) under a fingerprint of the device's identity
and the measuring runtime's version, so a driver or runtime upgrade measures again. Each device is
bounded to about 30 s; problem sizes grow only while there is time.

Measurers: on a CPU, ``"numpy"`` (the default: numpy fp32, torch bf16/fp16, ONNX Runtime int8 when
installed), ``"torch"`` and ``"onnxruntime"`` (that runtime only); on an NVIDIA GPU, ``"torch"``
(torch.cuda). Simulated devices carry figures in their spec (a ``"figures"`` object, the shape
``aivmm devices --json --bench`` prints) or have none.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aivmm._storage import cache_dir as storage_cache_dir
from aivmm.devices._bench_timing import Budget
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 30.0
SCHEMA = 1
_CPU_DEFAULT = "numpy"
_CPU_PREFERENCE = {
    "fp32": ("numpy", "onnxruntime", "torch"),
    "bf16": ("torch",),
    "fp16": ("torch",),
    "int8": ("onnxruntime", "torch"),
}


@dataclasses.dataclass(frozen=True)
class DeviceFigures:
    """What one device measured through one runtime. Throughput in TFLOP/s (int8: TOPS),
    bandwidth in GB/s (1e9 bytes/s); None where not measured."""

    device_id: str
    runtime: str
    matmul_tflops: Mapping[str, float] = dataclasses.field(default_factory=dict)
    measured_by: Mapping[str, str] = dataclasses.field(default_factory=dict)  # precision -> runtime
    memory_bandwidth_gbps: float | None = None
    h2d_pinned_gbps: float | None = None
    h2d_pageable_gbps: float | None = None
    d2h_pinned_gbps: float | None = None
    seconds: float = 0.0
    fingerprint: str = ""
    measured_at: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "matmul_tflops", MappingProxyType(dict(self.matmul_tflops)))
        object.__setattr__(self, "measured_by", MappingProxyType(dict(self.measured_by)))
        object.__setattr__(self, "notes", tuple(self.notes))

    def tflops(self, precision: str) -> float | None:
        return self.matmul_tflops.get(precision)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "device_id": self.device_id,
            "runtime": self.runtime,
            "matmul_tflops": dict(sorted(self.matmul_tflops.items())),
            "measured_by": dict(sorted(self.measured_by.items())),
            "memory_bandwidth_gbps": self.memory_bandwidth_gbps,
            "h2d_pinned_gbps": self.h2d_pinned_gbps,
            "h2d_pageable_gbps": self.h2d_pageable_gbps,
            "d2h_pinned_gbps": self.d2h_pinned_gbps,
            "seconds": self.seconds,
            "fingerprint": self.fingerprint,
            "measured_at": self.measured_at,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str = "<json>") -> DeviceFigures:
        try:
            return cls(
                device_id=str(data["device_id"]),
                runtime=str(data["runtime"]),
                matmul_tflops={str(k): float(v) for k, v in dict(data.get("matmul_tflops", {})).items()},
                measured_by={str(k): str(v) for k, v in dict(data.get("measured_by", {})).items()},
                memory_bandwidth_gbps=_opt_float(data.get("memory_bandwidth_gbps")),
                h2d_pinned_gbps=_opt_float(data.get("h2d_pinned_gbps")),
                h2d_pageable_gbps=_opt_float(data.get("h2d_pageable_gbps")),
                d2h_pinned_gbps=_opt_float(data.get("d2h_pinned_gbps")),
                seconds=float(data.get("seconds", 0.0)),
                fingerprint=str(data.get("fingerprint", "")),
                measured_at=str(data.get("measured_at", "")),
                notes=tuple(str(n) for n in data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed device figures: {type(exc).__name__}: {exc}") from exc


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------- identity and cache


def cache_dir() -> Path:
    return storage_cache_dir(create=False)


def default_runtime(device: Device) -> str:
    if device.kind is DeviceKind.CPU:
        return _CPU_DEFAULT
    return "torch"


def _versions(runtime: str) -> dict[str, str]:
    modules = {"numpy": ("numpy", "torch", "onnxruntime"), "torch": ("torch",), "onnxruntime": ("onnxruntime",)}
    out = {}
    for name in modules.get(runtime, (runtime,)):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def fingerprint(device: Device, runtime: str | None = None) -> str:
    """A key that changes when the device, its driver, or the measuring runtime changes."""
    runtime = runtime or default_runtime(device)
    keep = (
        "uuid",
        "pci_device_id",
        "pci_bus_id",
        "compute_capability",
        "driver_version",
        "gfx_architecture",
        "logical_cores",
        "physical_cores",
        "architecture",
        "unique_id",
    )
    identity = {
        "id": device.id,
        "name": device.name,
        "kind": device.kind.value,
        "vendor": device.vendor.value,
        "memory_total_bytes": device.memory_total_bytes,
        "features": sorted(device.features),
        "properties": {k: device.properties[k] for k in keep if k in device.properties},
        "runtime": runtime,
        "versions": _versions(runtime),
        "schema": SCHEMA,
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _cache_path(key: str) -> Path:
    return cache_dir() / "figures" / f"{key}.json"


def load_cached(device: Device, runtime: str | None = None) -> DeviceFigures | None:
    path = _cache_path(fingerprint(device, runtime))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DeviceFigures.from_json(data, source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ConfigError) as exc:
        log.warning("ignoring unreadable figures cache %s: %s", path, exc)
        return None


def _store(figures: DeviceFigures) -> None:
    path = _cache_path(figures.fingerprint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(figures.to_json(), indent=1), encoding="utf-8")
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:
        log.warning("could not cache device figures in %s: %s", path, exc)


# ---------------------------------------------------------------- public API


def figures(device: Device, runtime: str | None = None, *, measure_if_missing: bool = False) -> DeviceFigures | None:
    """Measured figures for the device through ``runtime`` (None: the device's default measurer).

    Returns the cached measurement, measures when ``measure_if_missing`` (bounded to ~30 s), and
    otherwise None: aivmm has no datasheet numbers to fall back on.
    """
    if device.simulated:
        return _simulated_figures(device, runtime)
    cached = load_cached(device, runtime)
    if cached is not None or not measure_if_missing:
        return cached
    try:
        return measure(device, runtime)
    except BackendUnavailableError as exc:
        log.info("cannot measure %s: %s", device.id, exc)
        return None


def _simulated_figures(device: Device, runtime: str | None) -> DeviceFigures | None:
    data = device.properties.get("figures")
    if not isinstance(data, Mapping):
        return None
    if runtime is not None and str(data.get("runtime", runtime)) != runtime:
        return None
    return DeviceFigures.from_json(
        {"device_id": device.id, "runtime": runtime or "simulated", **data}, source=f"simulated {device.id}"
    )


def can_measure(device: Device, runtime: str | None = None) -> tuple[bool, str]:
    """Whether this machine can measure the device with the runtime, and if not why."""
    runtime = runtime or default_runtime(device)
    if device.simulated:
        return False, "simulated device: its spec carries no figures"
    if device.kind is DeviceKind.CPU:
        from aivmm.devices import _bench_cpu

        if runtime not in ("numpy", "torch", "onnxruntime"):
            return False, f"no CPU measurer for runtime {runtime!r} (have numpy, torch, onnxruntime)"
        if not _bench_cpu.kernels(runtime):
            return False, f"{runtime} is not installed"
        return True, ""
    if device.vendor is Vendor.NVIDIA:
        from aivmm.devices import _bench_cuda

        if runtime != "torch":
            return False, f"NVIDIA GPUs are measured with torch.cuda, not {runtime!r}"
        if not _bench_cuda.cuda_available():
            return False, 'torch with CUDA is not installed (pip install "aivmm[torch]" with a CUDA build)'
        return True, ""
    return False, f"no measurer for {device.vendor.value} {device.kind.value} devices yet"


def measure(device: Device, runtime: str | None = None, *, budget_s: float = DEFAULT_BUDGET_S) -> DeviceFigures:
    """Measure now (bounded by ``budget_s``), cache and return the figures.

    Raises BackendUnavailableError when this machine cannot measure the device (see
    :func:`can_measure`).
    """
    if not budget_s > 0:
        raise ConfigError(f"budget_s must be positive, got {budget_s!r}")
    runtime = runtime or default_runtime(device)
    ok, why = can_measure(device, runtime)
    if not ok:
        raise BackendUnavailableError(f"cannot measure {device.id} ({device.name}) with {runtime}: {why}")
    start = time.perf_counter()
    budget = Budget(budget_s)
    cpu = device.kind is DeviceKind.CPU
    fields = _measure_cpu(device, runtime, budget) if cpu else _measure_cuda(device, budget)
    result = DeviceFigures(
        device_id=device.id,
        runtime=runtime,
        seconds=time.perf_counter() - start,
        fingerprint=fingerprint(device, runtime),
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    )
    _store(result)
    return result


def _measure_cpu(device: Device, runtime: str, budget: Budget) -> dict[str, Any]:
    from aivmm.devices import _bench_cpu

    plan: list[tuple[str, list[str]]] = []  # (precision, runtimes able to measure it, preferred first)
    precisions = ["fp32"] + [p for p in ("bf16", "fp16", "int8") if p in device.features]
    notes: list[str] = []
    for precision in precisions:
        candidates = _CPU_PREFERENCE[precision] if runtime == _CPU_DEFAULT else (runtime,)
        able = [r for r in candidates if precision in _bench_cpu.kernels(r)]
        if not able:
            notes.append(f"{precision} not measured: needs {' or '.join(candidates)}")
        else:
            plan.append((precision, able))
    busy = _busy_note(device)
    if busy:
        notes.append(busy)
    tflops: dict[str, float] = {}
    by: dict[str, str] = {}
    for position, (precision, able) in enumerate(plan):
        share = Budget(budget.share(len(plan) - position + 1))
        for measurer in able:  # the next runtime measures when one fails; the notes say which failed
            try:
                tflops[precision] = _bench_cpu.kernels(measurer)[precision](share)
                by[precision] = measurer
                break
            except Exception as exc:
                notes.append(f"{precision} via {measurer} failed: {type(exc).__name__}: {str(exc).strip()}")
    bandwidth = _bench_cpu.memory_bandwidth_gbps(budget, device.memory_free_bytes)
    return {"matmul_tflops": tflops, "measured_by": by, "memory_bandwidth_gbps": bandwidth, "notes": tuple(notes)}


def _busy_note(device: Device) -> str:
    """A CPU shared with other work measures low; say so in the figures rather than hide it."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return ""
    cpus = int(device.properties.get("logical_cores", 0) or os.cpu_count() or 1)
    if load <= 0.5 * cpus:
        return ""
    return f"machine busy while measuring: 1-minute load average {load:.1f} on {cpus} CPUs; figures are low"


def _measure_cuda(device: Device, budget: Budget) -> dict[str, Any]:
    from aivmm.devices import _bench_cuda

    tflops, notes = _bench_cuda.matmul_tflops(device, budget)
    copies = _bench_cuda.bandwidths(device, budget)
    return {
        "matmul_tflops": tflops,
        "measured_by": {p: "torch" for p in tflops},
        "memory_bandwidth_gbps": copies.get("memory_bandwidth_gbps"),
        "h2d_pinned_gbps": copies.get("h2d_pinned_gbps"),
        "h2d_pageable_gbps": copies.get("h2d_pageable_gbps"),
        "d2h_pinned_gbps": copies.get("d2h_pinned_gbps"),
        "notes": tuple(notes),
    }
