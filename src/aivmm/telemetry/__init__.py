"""Telemetry: documented metric names, the Prometheus exporter, one hardware meter per device kind.

``ServerMetrics`` needs prometheus-client (the ``serve`` extra); the meters need nothing.
"""

from __future__ import annotations

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
    "energy_counter",
    "merge",
    "meter_for",
]


def __getattr__(name: str) -> object:
    if name == "ServerMetrics":  # lazy: importing aivmm.telemetry must not need prometheus-client
        from aivmm.telemetry._metrics import ServerMetrics

        return ServerMetrics
    raise AttributeError(name)
