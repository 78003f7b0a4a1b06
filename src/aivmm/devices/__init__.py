"""Hardware discovery: Device values and one cheap, pure probe per vendor.

``discover()`` returns every device of this machine (CPU, NVIDIA through NVML, AMD through amdsmi
or sysfs, Intel GPUs and NPUs through sysfs and OpenVINO) plus simulated ones, each with the
backends that can drive it. ``discover_report()`` also says, per probe, why it found nothing.
Measured figures live in :mod:`aivmm.devices.bench`. Importing this package touches no hardware.
"""

from aivmm.devices._discovery import DiscoveryReport, clear_cache, discover, discover_report
from aivmm.devices._registry import register as register_probe
from aivmm.devices._registry import unregister as unregister_probe
from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

__all__ = [
    "Device",
    "DeviceKind",
    "DiscoveryReport",
    "ProbeReport",
    "Vendor",
    "clear_cache",
    "discover",
    "discover_report",
    "register_probe",
    "unregister_probe",
]
