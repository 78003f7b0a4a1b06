"""Hardware discovery: Device values and one cheap, pure probe per vendor."""

from aivmm.devices._types import Device, DeviceKind, ProbeReport, Vendor

__all__ = ["Device", "DeviceKind", "ProbeReport", "Vendor"]
