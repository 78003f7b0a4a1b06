"""One meter per device kind: utilisation, power, energy and memory where the machine lets us read them.

- :class:`CpuMeter`: utilisation from ``/proc/stat`` deltas, host memory from ``/proc/meminfo``,
  package energy and power from the one RAPL reader (:func:`aivmm.devices.rapl_reader`);
- :class:`NvidiaMeter`: NVML, through the process's one NVML session (:func:`aivmm.devices.nvml_session`);
- :class:`AmdMeter`: the amdgpu driver's sysfs files (what amdsmi reads underneath), energy
  through the process's amdsmi session;
- :class:`IntelMeter`: the i915/xe drivers' hwmon energy counter of each Intel GPU (discrete
  cards; integrated GPUs are inside the CPU package's RAPL count and have none);
- :class:`IntelNpuMeter`: the intel_vpu driver's busy time and memory in use of each Intel NPU
  (no energy counter: its power is inside the CPU package's).

The server's ``/metrics`` samples every meter; the planner reads one device's energy counter
around a timed loop (:func:`energy_counter`). Like device probes, meters are cheap and never
raise: a source that is absent or unreadable yields no readings and says why in ``unavailable``.
Vendor calls stay in the devices package's session owners and here; nothing else opens them.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from aivmm.devices import (
    RAPL_ROOT,
    Device,
    DeviceKind,
    Vendor,
    amdsmi_session,
    intel_gpu_dirs,
    intel_npu_dirs,
    nvml_session,
    rapl_reader,
)


@dataclasses.dataclass(frozen=True)
class Reading:
    device: str  # an aivmm device id (cpu:0, nvidia:0, amd:0)
    utilization: float | None = None  # 0..1
    power_w: float | None = None
    energy_j: float | None = None  # cumulative since some fixed point
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class EnergyCounter(Protocol):
    """A cumulative energy count for one device, read around a timed loop."""

    source: str  # "rapl", "nvml", "amdsmi", "intel-hwmon"

    def read_j(self) -> float: ...


class Meter(Protocol):
    """The counters of one device kind."""

    name: str  # the source it reads
    unavailable: str  # empty when the meter reads something

    def sample(self) -> list[Reading]:
        """A reading per device of this kind (empty when nothing is readable); never raises."""
        ...

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        """Device ``index``'s energy counter, or None and why it is not readable; never raises."""
        ...


class CpuMeter:
    """The host's CPU: utilisation and memory from /proc (no dependency), energy from RAPL."""

    name = "cpu"

    def __init__(self, proc: str = "/proc", rapl_root: str | pathlib.Path = RAPL_ROOT) -> None:
        self._proc = pathlib.Path(proc)
        self._rapl = rapl_reader(rapl_root)
        self._last = self._times()
        self._last_energy: tuple[float, float] | None = None  # (monotonic s, joules) at the previous sample
        missing = [
            why
            for why in (self._rapl.unavailable, "" if self._last is not None else f"{proc}/stat not readable")
            if why
        ]
        self.unavailable = "; ".join(missing) if len(missing) == 2 else ""

    def _times(self) -> tuple[float, float] | None:
        try:
            first = (self._proc / "stat").read_text().splitlines()[0].split()
            values = [float(v) for v in first[1:]]
        except (OSError, IndexError, ValueError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        return sum(values), idle

    def sample(self) -> list[Reading]:
        util = self._utilisation()
        power, joules = self._power()
        used, total = self._memory()
        if util is None and joules is None and total is None and self._last is None:
            return []
        return [Reading("cpu:0", util, power, joules, used, total)]

    def _utilisation(self) -> float | None:
        now = self._times()
        if now is None:
            return None
        util = None
        if self._last is not None and now[0] > self._last[0]:
            busy = (now[0] - self._last[0]) - (now[1] - self._last[1])
            util = max(0.0, min(1.0, busy / (now[0] - self._last[0])))
        self._last = now
        return util

    def _power(self) -> tuple[float | None, float | None]:
        """Watts since the previous sample (the rate between two counts) and cumulative joules."""
        if self._rapl.unavailable:
            return None, None
        now, joules = time.monotonic(), self._rapl.read_j()
        last, self._last_energy = self._last_energy, (now, joules)
        if last is None or now <= last[0]:
            return None, joules
        return (joules - last[1]) / (now - last[0]), joules

    def _memory(self) -> tuple[int | None, int | None]:
        try:
            info = dict(line.split(":", 1) for line in (self._proc / "meminfo").read_text().splitlines() if ":" in line)
            total = int(info["MemTotal"].split()[0]) * 1024
            avail = int(info["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None, None
        return total - avail, total

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        return (None, self._rapl.unavailable) if self._rapl.unavailable else (self._rapl, "")


class NvidiaMeter:
    """NVIDIA GPUs through NVML (nvidia-ml-py): utilisation, power, energy, memory."""

    name = "nvml"

    def __init__(self) -> None:
        self._nvml, self.unavailable = nvml_session().library()
        self._count = 0
        if self._nvml is not None:
            try:
                self._count = int(self._nvml.nvmlDeviceGetCount())
            except Exception as exc:  # absent driver: not an error, just nothing to read
                self.unavailable = f"NVML not readable: {_describe(exc)}"
        else:
            self.unavailable = f"NVML not readable: {self.unavailable}"

    def sample(self) -> list[Reading]:
        nv = self._nvml
        if nv is None or self.unavailable:
            return []
        out = []
        for i in range(self._count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                power = _try(nv.nvmlDeviceGetPowerUsage, h, per=1000.0)  # mW
                energy = _try(nv.nvmlDeviceGetTotalEnergyConsumption, h, per=1000.0)  # mJ
                out.append(Reading(f"nvidia:{i}", util, power, energy, int(mem.used), int(mem.total)))
            except Exception:
                continue
        return out

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        if self._nvml is None:
            return None, self.unavailable
        try:
            return _NvmlEnergy(self._nvml, index), ""
        except Exception as exc:  # NVMLError_NotSupported on GPUs without the counter
            return None, f"NVML energy counter not readable: {_describe(exc)}"


class _NvmlEnergy:
    source = "nvml"

    def __init__(self, nvml: Any, index: int) -> None:
        self._nvml = nvml
        self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.read_j()  # fails now (not in the timed loop) when the GPU has no energy counter

    def read_j(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1e3  # mJ


class AmdMeter:
    """AMD GPUs through the amdgpu driver's sysfs files; energy through amdsmi."""

    name = "amdgpu-sysfs"

    def __init__(self, root: str = "/sys/class/drm") -> None:
        self._cards: list[pathlib.Path] = []
        try:
            for card in sorted(pathlib.Path(root).glob("card[0-9]*")):
                dev = card / "device"
                if (dev / "gpu_busy_percent").exists():
                    self._cards.append(dev)
        except OSError:
            pass
        self.unavailable = "" if self._cards else "no amdgpu device in sysfs"

    def sample(self) -> list[Reading]:
        out = []
        for i, dev in enumerate(self._cards):
            busy = _read_float(dev / "gpu_busy_percent")
            used = _read_float(dev / "mem_info_vram_used")
            total = _read_float(dev / "mem_info_vram_total")
            power = None
            for hw in dev.glob("hwmon/hwmon*"):
                uw = _read_float(hw / "power1_average") or _read_float(hw / "power1_input")
                if uw is not None:
                    power = uw / 1e6
            out.append(
                Reading(
                    f"amd:{i}",
                    None if busy is None else busy / 100.0,
                    power,
                    None,
                    None if used is None else int(used),
                    None if total is None else int(total),
                )
            )
        return out

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        amdsmi, why = amdsmi_session().library()
        if amdsmi is None:
            return None, f"amdsmi energy counter not readable: {why}"
        try:
            return _AmdsmiEnergy(amdsmi, index), ""
        except Exception as exc:  # an amdsmi status error, or no such GPU
            return None, f"amdsmi energy counter not readable: {_describe(exc)}"


class _AmdsmiEnergy:
    source = "amdsmi"

    def __init__(self, amdsmi: Any, index: int) -> None:
        self._amdsmi = amdsmi
        self._handle = amdsmi.amdsmi_get_processor_handles()[index]
        self.read_j()

    def read_j(self) -> float:
        info = self._amdsmi.amdsmi_get_energy_count(self._handle)
        counter = float(info.get("energy_accumulator", info.get("power", 0)))
        resolution = float(info.get("counter_resolution", 15.3))  # microjoules per count
        return counter * resolution / 1e6


class IntelMeter:
    """Intel GPUs through the i915/xe hwmon files: energy, and power as its rate between samples."""

    name = "intel-hwmon"

    def __init__(self, root: str | pathlib.Path = "/sys") -> None:
        # One entry per GPU in the probe's order (intel-gpu:N), None where the GPU has no counter.
        self._energy = [_hwmon_energy_file(d) for d in intel_gpu_dirs(root)]
        self._last: dict[int, tuple[float, float]] = {}  # index -> (monotonic s, joules) at the previous sample
        found = any(path is not None for path in self._energy)
        self.unavailable = "" if found else f"no readable Intel GPU energy counter (hwmon energy1_input) under {root}"

    def sample(self) -> list[Reading]:
        out = []
        for i, path in enumerate(self._energy):
            joules = _read_float(path) if path is not None else None
            if joules is None:
                continue
            joules /= 1e6  # microjoules
            now = time.monotonic()
            last, self._last[i] = self._last.get(i), (now, joules)
            power = (joules - last[1]) / (now - last[0]) if last is not None and now > last[0] else None
            out.append(Reading(f"intel-gpu:{i}", None, power, joules))
        return out

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        path = self._energy[index] if 0 <= index < len(self._energy) else None
        if path is None:
            return (
                None,
                f"intel-gpu:{index} has no readable hwmon energy counter ({self.unavailable or 'integrated GPU?'})",
            )
        return _HwmonEnergy(path), ""


class _HwmonEnergy:
    source = "intel-hwmon"

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path

    def read_j(self) -> float:
        uj = _read_float(self._path)
        if uj is None:
            raise OSError(f"{self._path} is not readable")
        return uj / 1e6


class IntelNpuMeter:
    """Intel NPUs through the intel_vpu driver's sysfs: utilisation (busy time over wall time
    between two samples) and the memory in use."""

    name = "intel-vpu"

    def __init__(self, root: str | pathlib.Path = "/sys") -> None:
        self._npus = [d for d in intel_npu_dirs(root) if _read_float(d / "npu_busy_time_us") is not None]
        self._last: dict[int, tuple[float, float]] = {}  # index -> (monotonic s, busy s) at the previous sample
        self.unavailable = (
            "" if self._npus else f"no Intel NPU (intel_vpu) with a readable npu_busy_time_us under {root}"
        )

    def sample(self) -> list[Reading]:
        out = []
        for i, npu in enumerate(self._npus):
            busy_us = _read_float(npu / "npu_busy_time_us")
            if busy_us is None:
                continue
            now, busy = time.monotonic(), busy_us / 1e6
            last, self._last[i] = self._last.get(i), (now, busy)
            util = max(0.0, min(1.0, (busy - last[1]) / (now - last[0]))) if last and now > last[0] else None
            used = _read_float(npu / "npu_memory_utilization")
            out.append(Reading(f"intel-npu:{i}", util, None, None, None if used is None else int(used)))
        return out

    def energy(self, index: int) -> tuple[EnergyCounter | None, str]:
        return None, "Intel NPUs expose no energy counter (their power is inside the CPU package's RAPL count)"


def _hwmon_energy_file(device_dir: pathlib.Path) -> pathlib.Path | None:
    """The card's energy counter: ``energy1_input`` (xe labels it "card", beside "pkg")."""
    for hwmon in sorted(device_dir.glob("hwmon/hwmon*")):
        path = hwmon / "energy1_input"
        if _read_float(path) is not None:
            return path
    return None


def meter_for(device: Device, *, rapl_root: str | pathlib.Path = RAPL_ROOT) -> Meter | None:
    """The meter of ``device``'s kind, or None where aivmm knows none (another vendor's NPU, an Apple GPU)."""
    if device.kind is DeviceKind.CPU:
        return CpuMeter(rapl_root=rapl_root)
    if device.kind is DeviceKind.GPU and device.vendor is Vendor.NVIDIA:
        return NvidiaMeter()
    if device.kind is DeviceKind.GPU and device.vendor is Vendor.AMD:
        return AmdMeter()
    if device.kind is DeviceKind.GPU and device.vendor is Vendor.INTEL:
        return IntelMeter()
    if device.kind is DeviceKind.NPU and device.vendor is Vendor.INTEL:
        return IntelNpuMeter()
    return None


def energy_counter(device: Device, *, rapl_root: str | pathlib.Path = RAPL_ROOT) -> tuple[EnergyCounter | None, str]:
    """An energy counter for ``device``, or None and the reason none is readable."""
    if device.simulated:
        return None, "simulated device: no energy counter"
    meter = meter_for(device, rapl_root=rapl_root)
    if meter is None:
        return None, f"no energy counter known for {device.vendor.value} {device.kind.value}"
    return meter.energy(device.index)


def default_meters() -> list[Meter]:
    return [CpuMeter(), NvidiaMeter(), AmdMeter(), IntelMeter(), IntelNpuMeter()]


def merge(readings: list[Reading]) -> dict[str, Reading]:
    """One reading per device: later meters fill the fields earlier ones left empty."""
    out: dict[str, Reading] = {}
    for r in readings:
        prev = out.get(r.device)
        if prev is None:
            out[r.device] = r
            continue
        out[r.device] = Reading(
            r.device,
            *(
                getattr(prev, f) if getattr(prev, f) is not None else getattr(r, f)
                for f in ("utilization", "power_w", "energy_j", "memory_used_bytes", "memory_total_bytes")
            ),
        )
    return out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_float(path: pathlib.Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _try(fn: Callable[..., Any], *args: Any, per: float = 1.0) -> float | None:
    """``fn(*args) / per``, or None where the device does not report it."""
    try:
        return float(fn(*args)) / per
    except Exception:
        return None
