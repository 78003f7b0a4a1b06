"""Learned corrections to the cost model, from the planner's own measurements.

The roofline knows FLOPs and bytes, not how well each runtime lowers each kind of graph (torch
eager on a CNN, OpenVINO on an LSTM). After every measurement the planner records
``measured p50 / predicted`` for (backend, device, precision, model category) as a running mean in
log space, on disk beside the plan cache; later predictions for that group are multiplied by it,
so the candidates chosen for measurement, ``measure=False`` plans and fast starts improve with use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading

from aivmm.devices import Device
from aivmm.dtypes import Precision
from aivmm.models import Category
from aivmm.optimize import cache_dir

log = logging.getLogger(__name__)

ALPHA = 0.3  # weight of the newest observation
_CLAMP = (1e-2, 1e2)  # a correction outside this is a broken measurement, not a runtime's speed
_lock = threading.Lock()


def group(backend: str, device: Device, precision: Precision, category: Category) -> str:
    return f"{backend}|{device.kind.value}|{device.name}|{precision.value}|{category.value}"


def _path() -> str:
    return str(cache_dir("planner") / "calibration.json")


def _read() -> dict[str, dict[str, float]]:
    try:
        with open(_path()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cost-model calibration: %s", exc)
        return {}


def factor(key: str) -> float:
    """The learned multiplier for predictions of this group (1.0 when nothing was measured yet)."""
    entry = _read().get(key)
    if not entry:
        return 1.0
    return math.exp(float(entry.get("log_ratio", 0.0)))


def record(key: str, measured_ms: float, predicted_ms: float) -> None:
    """Fold one measurement into the group's correction. ``predicted_ms`` is the uncorrected roofline."""
    if not (measured_ms > 0 and predicted_ms > 0 and math.isfinite(measured_ms) and math.isfinite(predicted_ms)):
        return
    ratio = min(max(measured_ms / predicted_ms, _CLAMP[0]), _CLAMP[1])
    with _lock:
        data = _read()
        entry = data.get(key)
        if entry:
            value = (1 - ALPHA) * float(entry["log_ratio"]) + ALPHA * math.log(ratio)
            data[key] = {"log_ratio": value, "n": int(entry.get("n", 1)) + 1}
        else:
            data[key] = {"log_ratio": math.log(ratio), "n": 1}
        folder = os.path.dirname(_path())
        fd, tmp = tempfile.mkstemp(prefix="calibration.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=0, sort_keys=True)
            os.replace(tmp, _path())
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
