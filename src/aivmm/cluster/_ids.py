"""Cluster-unique device ids: ``node-<8 hex of the Ray node id>/<local id>``.

Every node sees its own ``cpu:0``; the planner needs one namespace for all of them. The node part
comes first so the constraint selectors that match a kind or vendor (``cpu``, ``nvidia``) keep
working, and the local id stays readable at the end.
"""

from __future__ import annotations

from aivmm.devices import Device
from aivmm.errors import DeviceNotFoundError

SEPARATOR = "/"


def node_label(node_id: str) -> str:
    """A short, stable, readable name for a Ray node (its id is 56 hex digits)."""
    return f"node-{node_id[:8]}"


def qualify(label: str, device: Device) -> Device:
    """The node-local ``device`` renamed into the cluster namespace, with its node recorded."""
    props = dict(device.properties)
    props["node"] = label
    props["local_id"] = device.id
    return device.with_(id=f"{label}{SEPARATOR}{device.id}", properties=props)


def split(cluster_id: str) -> tuple[str, str]:
    """``"node-ab12cd34/cpu:0"`` → ``("node-ab12cd34", "cpu:0")``."""
    label, sep, local = cluster_id.partition(SEPARATOR)
    if not sep or not label or not local:
        raise DeviceNotFoundError(
            f"bad cluster device id {cluster_id!r}: expected NODE{SEPARATOR}DEVICE such as 'node-ab12cd34/cpu:0'"
        )
    return label, local
