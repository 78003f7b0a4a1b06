"""Telemetry: documented metric names, the Prometheus exporter, hardware samplers.

``ServerMetrics`` needs prometheus-client (the ``serve`` extra); the samplers need nothing.
"""

from __future__ import annotations

from aivmm.telemetry._names import METRICS
from aivmm.telemetry._samplers import Reading, default_samplers

__all__ = ["METRICS", "Reading", "ServerMetrics", "default_samplers"]


def __getattr__(name: str) -> object:
    if name == "ServerMetrics":  # lazy: importing aivmm.telemetry must not need prometheus-client
        from aivmm.telemetry._metrics import ServerMetrics

        return ServerMetrics
    raise AttributeError(name)
