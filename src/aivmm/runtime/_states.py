"""Lifecycle and residency identities."""

from __future__ import annotations

import enum


class ModelState(enum.Enum):
    """``LOADING -> READY -> DRAINING -> UNLOADED``; ``FAILED`` when no device can hold it any more."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    FAILED = "failed"


class Tier(enum.Enum):
    """Where a replica's weights are: on its device, in host memory, or only in the model file."""

    DEVICE = "device"
    HOST = "host"
    DISK = "disk"
