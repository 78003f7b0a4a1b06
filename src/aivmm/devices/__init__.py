"""Hardware discovery: Device values and one cheap, pure probe per vendor.

``discover()`` returns every device of this machine (CPU, NVIDIA through NVML, AMD through amdsmi
or sysfs, Intel GPUs and NPUs through sysfs and OpenVINO) plus simulated ones, each with the
backends that can drive it. ``discover_report()`` also says, per probe, why it found nothing.
Measured figures live in :mod:`aivmm.devices.bench`. The vendor management libraries are opened
once per process (:func:`nvml_session`, :func:`amdsmi_session`) and the RAPL counters read by one
reader (:func:`rapl_reader`), shared by discovery, telemetry and the planner's energy counters.
Importing this package touches no hardware.
"""

from typing import TYPE_CHECKING

from aivmm._lazy import LazyExports
from aivmm.devices._discovery import DiscoveryReport, clear_cache, discover, discover_report
from aivmm.devices._intel import gpu_dirs as intel_gpu_dirs
from aivmm.devices._intel import npu_dirs as intel_npu_dirs
from aivmm.devices._library import LibrarySession, amdsmi_session, nvml_session, using_library
from aivmm.devices._rapl import RAPL_ROOT, RaplReader, rapl_reader
from aivmm.devices._registry import register as register_probe
from aivmm.devices._registry import unregister as unregister_probe
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

if TYPE_CHECKING:
    from aivmm.devices._check import CheckResult, CheckStatus, check_device

__all__ = [
    "RAPL_ROOT",
    "CheckResult",
    "CheckStatus",
    "Device",
    "DeviceKind",
    "DiscoveryReport",
    "LibrarySession",
    "ProbeReport",
    "RaplReader",
    "Vendor",
    "amdsmi_session",
    "check_device",
    "clear_cache",
    "discover",
    "discover_report",
    "intel_gpu_dirs",
    "intel_npu_dirs",
    "nvml_session",
    "rapl_reader",
    "register_probe",
    "unregister_probe",
    "using_library",
]

# lazy: the end-to-end check imports numpy and a backend; discovery must not
__getattr__ = LazyExports(
    __name__,
    {
        "CheckResult": "aivmm.devices._check:CheckResult",
        "CheckStatus": "aivmm.devices._check:CheckStatus",
        "check_device": "aivmm.devices._check:check_device",
    },
)
