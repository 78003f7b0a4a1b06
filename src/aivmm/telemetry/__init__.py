"""Telemetry: documented metric names, the Prometheus exporter, one hardware meter per device kind.

``ServerMetrics`` needs prometheus-client (the ``serve`` extra); the meters need nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aivmm._lazy import LazyExports
from aivmm.telemetry._meters import (
    AmdMeter,
    CpuMeter,
    EnergyCounter,
    IntelMeter,
    IntelNpuMeter,
    Meter,
    NvidiaMeter,
    Reading,
    default_meters,
    energy_counter,
    merge,
    meter_for,
)
from aivmm.telemetry._names import METRICS
from aivmm.telemetry._view import fetch_status, normalise_url
from aivmm.telemetry._view import render as render_status

if TYPE_CHECKING:
    from aivmm.telemetry._metrics import ServerMetrics, device_rows

# The name telemetry's callers used before meters replaced samplers.
default_samplers = default_meters

__all__ = [
    "METRICS",
    "AmdMeter",
    "CpuMeter",
    "EnergyCounter",
    "IntelMeter",
    "IntelNpuMeter",
    "Meter",
    "NvidiaMeter",
    "Reading",
    "ServerMetrics",
    "default_meters",
    "default_samplers",
    "device_rows",
    "energy_counter",
    "fetch_status",
    "merge",
    "meter_for",
    "normalise_url",
    "render_status",
]

# lazy: importing aivmm.telemetry must not need prometheus-client
__getattr__ = LazyExports(
    __name__,
    {
        "ServerMetrics": "aivmm.telemetry._metrics:ServerMetrics",
        "device_rows": "aivmm.telemetry._metrics:device_rows",
    },
)
