"""The node agent: one detached Ray actor per node, pinned there, owning that node's aivmm VMM.

It discovers the node's devices in the node's own environment (``AIVMM_SIMULATE`` set for that
node's raylet, or the ``simulate`` argument), loads the models the registry assigns to it on its
local engine (so overcommit, residency and dynamic batching work per node, as on one machine),
measures them there (``measure=True``: the plan cache of *this* node keeps the figures) and runs
requests. Requests arrive on its channel (``_channel``), one thread per connection, each blocking
in the engine, so the engine's dynamic batching can group them; control calls arrive through Ray.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from aivmm._storage import cache_dir, file_sha256
from aivmm.cluster._channel import ChannelServer
from aivmm.errors import ConfigError, ModelNotFoundError
from aivmm.options import DeployOptions

log = logging.getLogger(__name__)

# How often an agent looks whether its raylet still lives.
_RAYLET_POLL_S = 0.1


def _key(name: str, device: str) -> str:
    """One engine entry per (model, local device): a model may have replicas on several devices of a node."""
    return f"{name}@{device}"


def local_copy(path: str, sha256: str, blob: list[Any]) -> str:
    """The model file on this machine: ``path`` when it holds the same bytes, else a copy fetched
    from the object store into the cache, keyed by content hash (fetched once per node)."""
    p = pathlib.Path(path)
    if p.is_file() and (not sha256 or file_sha256(p) == sha256):
        return str(p)
    import ray

    target = cache_dir("cluster-models") / f"{sha256 or 'unhashed'}{p.suffix or '.onnx'}"
    if not target.is_file():
        data = ray.get(blob[0])
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


class NodeAgent:
    """Runs on one node. Control methods are called by the registry through Ray."""

    def __init__(self, node_id: str, authkey: bytes, simulate: str | None = None) -> None:
        import ray

        from aivmm.vmm import VMM

        self.node_id = node_id
        # discover() reads AIVMM_SIMULATE itself: the node's environment decides what it simulates.
        self._vmm = VMM(simulate=simulate)
        self._models: dict[str, Any] = {}
        # The channel listens on the node's own Ray address (its --node-ip-address), nowhere else.
        self._authkey = authkey
        self._channel = ChannelServer(ray.util.get_node_ip_address(), authkey, self.infer)
        threading.Thread(
            target=self._watch_raylet, args=(os.getppid(),), name="aivmm-raylet-watch", daemon=True
        ).start()

    def _watch_raylet(self, raylet_pid: int) -> None:
        """End this agent as soon as its raylet (the parent of every Ray worker) is gone.

        Without its raylet the node is dead to Ray, but the worker process lingers for seconds
        (until Ray's own checks notice) and keeps answering on its channel meanwhile; ending at
        once breaks the channel's connections, so clients fail over in ~0.1 s whatever Ray's
        health-check settings are.
        """
        while os.getppid() == raylet_pid:
            time.sleep(_RAYLET_POLL_S)
        log.error("node agent %s: raylet %d is gone; exiting", self.node_id[:8], raylet_pid)
        self._channel.close()
        os._exit(1)  # no clean-up: the raylet that would run it is dead

    def adopt(self, authkey: bytes) -> dict[str, Any]:
        """A registry takes this agent over (a fresh agent's own, or a new registry after the old
        one died): models it does not know are unloaded, and requests need its key from now on."""
        import ray

        for key in list(self._models):
            name, _, device = key.rpartition("@")
            self.unload(name, device, drain=False)
        if authkey != self._authkey:
            old, self._authkey = self._channel, authkey
            self._channel = ChannelServer(ray.util.get_node_ip_address(), authkey, self.infer)
            old.close()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        import ray

        return {
            "node_id": self.node_id,
            "running_on": ray.get_runtime_context().get_node_id(),  # proves the pinning held
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "simulate": os.environ.get("AIVMM_SIMULATE", ""),
            "cache_dir": str(cache_dir(create=False)),
            "endpoint": list(self._channel.address),
            "devices": [d.to_json() for d in self._vmm.devices],
        }

    def deploy(self, name: str, path: str, sha256: str, blob: list[Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """Load ``name`` with ``options`` (a DeployOptions as plain data, pinned to one device of
        this node and strict: the registry already chose it); with ``measure`` the candidates of
        that device are measured here and cached here."""
        opts = DeployOptions.from_mapping(options, source=f"deploy of {name!r}")
        if opts.device is None:
            raise ConfigError(f"deploy of {name!r} on node {self.node_id[:8]}: no device pinned")
        key = _key(name, opts.device)
        local = local_copy(path, sha256, blob)
        model = self._vmm.deploy(local, options=opts.replace(name=key))
        self._models[key] = model
        chosen = model.plan.chosen.to_json()
        return {
            "name": name,
            "placement": model.plan.chosen.config.label(),
            "replicas": opts.replicas,
            "measured": model.plan.measured,
            "cache_hit": model.plan.cache_hit,
            "latency_ms_measured": chosen.get("latency_ms_measured"),
            "node": self.node_id,
            "cache_dir": str(cache_dir(create=False)),
        }

    def infer(
        self, name: str, device: str, feeds: Mapping[str, Any], priority: int = 0, deadline_ms: float | None = None
    ) -> dict[str, Any]:
        model = self._models.get(_key(name, device))
        if model is None:
            raise ModelNotFoundError(f"model {name!r} is not loaded on {device} of node {self.node_id[:8]}")
        return model.execute(feeds, priority=priority, deadline_ms=deadline_ms)

    def time_local(self, name: str, device: str, feeds: Mapping[str, Any], calls: int) -> float:
        """Median ms of ``calls`` sequential requests run here, without the channel: the baseline
        against which the routing overhead is measured (benchmarks/cluster.py)."""
        import statistics
        import time

        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.infer(name, device, feeds)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def unload(self, name: str, device: str, drain: bool = True) -> bool:
        key = _key(name, device)
        if self._models.pop(key, None) is None:
            return False
        self._vmm.unload(key, drain=drain)
        return True

    def status(self) -> dict[str, Any]:
        return self._vmm.status()

    def ping(self) -> str:
        return self.node_id
