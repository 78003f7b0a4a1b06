"""Energy counters read around a timed loop: RAPL (CPU package), NVML (NVIDIA), amdsmi (AMD).

Each meter answers ``None`` with the reason when its counter is not readable here (no powercap
in a VM, no pynvml, permission denied) instead of raising: energy is reported when measurable.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Protocol

from aivmm.devices._types import Device, DeviceKind, Vendor

RAPL_ROOT = "/sys/class/powercap"


class EnergyMeter(Protocol):
    source: str

    def read_j(self) -> float: ...


class _Rapl:
    source = "rapl"

    def __init__(self, paths: list[tuple[str, float]]) -> None:
        self._paths = paths  # (energy_uj file, wrap range in uj)
        self._last = [self._raw(p) for p, _ in paths]
        self._total = 0.0

    @staticmethod
    def _raw(path: str) -> float:
        with open(path) as fh:
            return float(fh.read().strip())

    def read_j(self) -> float:
        for i, (path, wrap) in enumerate(self._paths):
            now = self._raw(path)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped
                delta += wrap
            self._total += delta
            self._last[i] = now
        return self._total / 1e6


class _Nvml:
    source = "nvml"

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read_j()  # fails now (not in the timed loop) when the GPU has no energy counter

    def read_j(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1e3  # mJ


class _Amdsmi:
    source = "amdsmi"

    def __init__(self, index: int) -> None:
        import amdsmi

        amdsmi.amdsmi_init()
        self._amdsmi = amdsmi
        self._handle = amdsmi.amdsmi_get_processor_handles()[index]
        self.read_j()

    def read_j(self) -> float:
        info = self._amdsmi.amdsmi_get_energy_count(self._handle)
        counter = float(info.get("energy_accumulator", info.get("power", 0)))
        resolution = float(info.get("counter_resolution", 15.3))  # microjoules per count
        return counter * resolution / 1e6


def _rapl_meter(root: str) -> tuple[EnergyMeter | None, str]:
    zones = sorted(glob.glob(os.path.join(root, "intel-rapl:[0-9]*")))
    zones = [z for z in zones if z.count(":") == 1]  # packages only; sub-zones are inside them
    if not zones:
        return None, f"no RAPL zones under {root}"
    paths = []
    for z in zones:
        energy = os.path.join(z, "energy_uj")
        if not os.access(energy, os.R_OK):
            return None, f"{energy} is not readable (root only on recent kernels)"
        try:
            with open(os.path.join(z, "max_energy_range_uj")) as fh:
                wrap = float(fh.read().strip())
        except OSError:
            wrap = 2.0**32
        paths.append((energy, wrap))
    try:
        return _Rapl(paths), ""
    except OSError as exc:
        return None, f"RAPL read failed: {exc}"


def meter_for(device: Device, *, rapl_root: str = RAPL_ROOT) -> tuple[EnergyMeter | None, str]:
    """An energy meter for ``device``, or None and the reason none is readable."""
    if device.simulated:
        return None, "simulated device: no energy counter"
    if device.kind is DeviceKind.CPU:
        return _rapl_meter(rapl_root)
    if device.vendor is Vendor.NVIDIA:
        if "pynvml" not in sys.modules:
            try:
                import pynvml  # noqa: F401
            except ImportError:
                return None, "pynvml is not installed: pip install \"aivmm[nvidia]\""
        try:
            return _Nvml(device.index), ""
        except Exception as exc:  # NVMLError_NotSupported on GPUs without the counter
            return None, f"NVML energy counter not readable: {exc}"
    if device.vendor is Vendor.AMD:
        try:
            return _Amdsmi(device.index), ""
        except Exception as exc:  # ImportError or an amdsmi status error
            return None, f"amdsmi energy counter not readable: {exc}"
    return None, f"no energy counter known for {device.vendor.value} {device.kind.value}"
