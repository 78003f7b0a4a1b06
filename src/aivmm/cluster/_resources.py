"""aivmm's devices as Ray custom resources, and the claim a device placement holds.

Every node publishes, per device kind (vendor and kind: ``aivmm/cpu``, ``aivmm/nvidia_gpu``,
``aivmm/amd_gpu``, ``aivmm/intel_npu`` ...), how many such devices it has, and one unit per device
(``aivmm/device/nvidia:0``). Declare them when starting the node, as Ray users declare custom
resources::

    ray start --address HEAD:6379 --resources "$(aivmm cluster resources)"

or let the registry publish them when the node joins (``published`` in the status). When aivmm
places models on a device it holds one placement-group bundle of that device's claim on its node:
one unit of the kind, one of the device, and for a GPU Ray itself schedules (``GPU`` in the node's
resources) one ``GPU`` — so Ray never gives that device to other work, and other work holding it
keeps aivmm off it. Pure functions: tested without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aivmm.devices import Device, DeviceKind, Vendor

PREFIX = "aivmm/"


def kind_resource(device: Device) -> str:
    """``aivmm/cpu`` for any CPU, else ``aivmm/<vendor>_<kind>`` (``aivmm/nvidia_gpu``)."""
    if device.kind is DeviceKind.CPU:
        return f"{PREFIX}cpu"
    return f"{PREFIX}{device.vendor.value}_{device.kind.value}"


def device_resource(local_id: str) -> str:
    """The one unit of a device (its node-local id: ``aivmm/device/nvidia:0``)."""
    return f"{PREFIX}device/{local_id}"


def node_resources(devices: Sequence[Device]) -> dict[str, float]:
    """What a node with ``devices`` (node-local ids) publishes."""
    out: dict[str, float] = {}
    for d in devices:
        out[kind_resource(d)] = out.get(kind_resource(d), 0.0) + 1.0
        out[device_resource(d.id)] = 1.0
    return dict(sorted(out.items()))


def missing(published: Mapping[str, float], wanted: Mapping[str, float]) -> dict[str, float]:
    """The resources of ``wanted`` a node does not publish yet (at least as much)."""
    return {k: v for k, v in wanted.items() if published.get(k, 0.0) < v}


def claim(device: Device, local_id: str, node_resources: Mapping[str, float]) -> dict[str, float]:
    """The bundle aivmm holds while it has models on ``device`` (``local_id`` on its node)."""
    bundle = {kind_resource(device): 1.0, device_resource(local_id): 1.0}
    # Ray counts NVIDIA (and AMD) GPUs itself as GPU; holding one keeps Ray's own GPU work off it.
    if (
        device.kind is DeviceKind.GPU
        and device.vendor in (Vendor.NVIDIA, Vendor.AMD)
        and not device.simulated
        and node_resources.get("GPU", 0.0) >= 1.0
    ):
        bundle["GPU"] = 1.0
    return bundle
