"""Hardware samplers: utilisation, power and energy where the machine lets us read them.

One sampler per source (NVML for NVIDIA, sysfs/amdsmi for AMD, RAPL powercap for CPU packages,
/proc/stat or psutil for CPU utilisation). Like device probes they are cheap and never raise: a
source that is absent or unreadable yields no readings and says why in ``unavailable``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Reading:
    device: str  # an aivmm device id (cpu:0, nvidia:0, amd:0)
    utilization: float | None = None  # 0..1
    power_w: float | None = None
    energy_j: float | None = None  # cumulative since some fixed point
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class Sampler(Protocol):
    name: str
    unavailable: str  # empty when the sampler reads something

    def sample(self) -> list[Reading]: ...


class NvmlSampler:
    """NVIDIA GPUs through NVML (nvidia-ml-py): utilisation, power, energy, memory."""

    name = "nvml"

    def __init__(self) -> None:
        self.unavailable = ""
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:  # absent library, no driver: not an error, just nothing to read
            self.unavailable = f"NVML not readable: {exc}"

    def sample(self) -> list[Reading]:
        nv = self._nvml
        if nv is None:
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


class AmdSysfsSampler:
    """AMD GPUs through the amdgpu driver's sysfs files (what amdsmi reads underneath)."""

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
            out.append(Reading(
                f"amd:{i}", None if busy is None else busy / 100.0, power, None,
                None if used is None else int(used), None if total is None else int(total),
            ))
        return out


class RaplSampler:
    """CPU package energy from the powercap RAPL counters; power is the rate between two samples."""

    name = "rapl"

    def __init__(self, root: str = "/sys/class/powercap") -> None:
        self._zones: list[tuple[pathlib.Path, float]] = []
        try:
            for zone in sorted(pathlib.Path(root).glob("intel-rapl:[0-9]*")):
                if zone.name.count(":") == 1 and os.access(zone / "energy_uj", os.R_OK):
                    wrap = _read_float(zone / "max_energy_range_uj") or float(2**32)
                    if _read_float(zone / "energy_uj") is not None:
                        self._zones.append((zone, wrap))
        except OSError:
            pass
        self.unavailable = "" if self._zones else "no readable RAPL powercap zone (needs root on most kernels)"
        self._last: dict[str, tuple[float, float]] = {}
        self._total: dict[str, float] = {}

    def sample(self) -> list[Reading]:
        if not self._zones:
            return []
        now = time.monotonic()
        joules = 0.0
        power = 0.0
        have_power = False
        for zone, wrap in self._zones:
            uj = _read_float(zone / "energy_uj")
            if uj is None:
                continue
            last = self._last.get(zone.name)
            if last is not None:
                delta = uj - last[1]
                if delta < 0:  # the counter wrapped
                    delta += wrap
                self._total[zone.name] = self._total.get(zone.name, 0.0) + delta / 1e6
                if now > last[0]:
                    power += delta / 1e6 / (now - last[0])
                    have_power = True
            self._last[zone.name] = (now, uj)
            joules += self._total.get(zone.name, 0.0)
        return [Reading("cpu:0", None, power if have_power else None, joules)]


class CpuSampler:
    """CPU utilisation from /proc/stat deltas (no dependency) and host memory from /proc/meminfo."""

    name = "cpu"

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = pathlib.Path(proc)
        self._last = self._times()
        self.unavailable = "" if self._last is not None else f"{proc}/stat not readable"

    def _times(self) -> tuple[float, float] | None:
        try:
            first = (self._proc / "stat").read_text().splitlines()[0].split()
            values = [float(v) for v in first[1:]]
        except (OSError, IndexError, ValueError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        return sum(values), idle

    def sample(self) -> list[Reading]:
        now = self._times()
        if now is None:
            return []
        util = None
        if self._last is not None and now[0] > self._last[0]:
            busy = (now[0] - self._last[0]) - (now[1] - self._last[1])
            util = max(0.0, min(1.0, busy / (now[0] - self._last[0])))
        self._last = now
        total = avail = None
        try:
            info = dict(line.split(":", 1) for line in (self._proc / "meminfo").read_text().splitlines() if ":" in line)
            total = int(info["MemTotal"].split()[0]) * 1024
            avail = int(info["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            pass
        used = None if total is None or avail is None else total - avail
        return [Reading("cpu:0", util, None, None, used, total)]


def default_samplers() -> list[Sampler]:
    return [CpuSampler(), RaplSampler(), NvmlSampler(), AmdSysfsSampler()]


def merge(readings: list[Reading]) -> dict[str, Reading]:
    """One reading per device: later samplers fill the fields earlier ones left empty."""
    out: dict[str, Reading] = {}
    for r in readings:
        prev = out.get(r.device)
        if prev is None:
            out[r.device] = r
            continue
        out[r.device] = Reading(r.device, *(
            getattr(prev, f) if getattr(prev, f) is not None else getattr(r, f)
            for f in ("utilization", "power_w", "energy_j", "memory_used_bytes", "memory_total_bytes")
        ))
    return out


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
