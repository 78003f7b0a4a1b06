"""The plan cache: a plan reused for the same model, devices, runtimes and request.

The key hashes the model's content hash, a fingerprint of the devices (identity and capability,
not free memory, which changes every second), the versions each planned backend states in its
``BackendInfo`` and aivmm's, the constraints, and the planning arguments. Any change is a different
key, so invalidation is by construction; entries are small JSON files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivmm._version import __version__
from aivmm.backends import distribution_versions, registry
from aivmm.devices import Device
from aivmm.optimize import cache_dir

log = logging.getLogger(__name__)

# The planner's own dependencies whose versions change a plan (the passes and the analysis run on
# onnx); each backend's versions come from its BackendInfo.
PLANNER_DISTRIBUTIONS = ("onnx",)


def backend_versions(name: str) -> dict[str, str] | str:
    """What the backend says changes its measurements (``Backend.versions()``, by default its
    ``BackendInfo.versions``), or why it has none."""
    try:
        backend = registry.get(name)
        if not backend.available():
            return "unavailable"
        return backend.versions()
    except Exception as exc:  # a plugin that cannot describe itself is keyed as such, not fatal to planning
        log.warning("backend %s cannot describe itself for the plan cache key: %r", name, exc)
        return f"unavailable: {type(exc).__name__}"


def runtime_versions(backends: Sequence[str]) -> dict[str, Any]:
    """aivmm's version, the planner's dependencies and every planned backend's versions."""
    out: dict[str, Any] = {"aivmm": __version__, **distribution_versions(*PLANNER_DISTRIBUTIONS)}
    out["backends"] = {name: backend_versions(name) for name in sorted(backends)}
    return out


def device_fingerprint(devices: Sequence[Device]) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "kind": d.kind.value,
            "vendor": d.vendor.value,
            "name": d.name,
            "memory_total_bytes": d.memory_total_bytes,
            "features": sorted(d.features),
            "runtimes": list(d.runtimes),
            "simulated": d.simulated,
        }
        for d in sorted(devices, key=lambda d: d.id)
    ]


def feeds_digest(feeds: Mapping[str, Any] | None) -> str:
    if not feeds:
        return ""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(np.asarray(feeds[name]))
        digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode() + arr.tobytes())
    return digest.hexdigest()


def plan_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load(key: str) -> dict[str, Any] | None:
    path = cache_dir("plans") / f"{key}.json"
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a corrupt entry is a miss, and is replaced below
        log.warning("ignoring unreadable plan cache entry %s: %s", path, exc)
        return None


def store(key: str, data: Mapping[str, Any]) -> pathlib.Path:
    folder = cache_dir("plans")
    path = folder / f"{key}.json"
    fd, tmp = tempfile.mkstemp(prefix=key[:8], suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
