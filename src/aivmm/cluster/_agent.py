"""The node agent: one Ray actor per node, pinned there, owning that node's aivmm VMM.

It discovers the node's devices in the node's own environment (``AIVMM_SIMULATE`` set for that
node's raylet, or the ``simulate`` argument), loads the models the head assigns to it on its local
engine (so overcommit, residency and dynamic batching work per node, as on one machine) and runs
requests. It is a threaded actor (``max_concurrency`` threads): many requests are in flight at
once, each blocking its thread in the engine, so the engine's dynamic batching can group them.
"""

from __future__ import annotations

import os
import pathlib
import socket
import tempfile
from collections.abc import Mapping
from typing import Any

from aivmm._storage import file_sha256
from aivmm.errors import ModelNotFoundError


def _key(name: str, device: str) -> str:
    """One engine entry per (model, local device): a model may have replicas on several devices of a node."""
    return f"{name}@{device}"


class NodeAgent:
    """Runs on one node. Methods are called by the head (ClusterVMM) through Ray."""

    def __init__(self, node_id: str, simulate: str | None = None) -> None:
        from aivmm.vmm import VMM

        self.node_id = node_id
        # discover() reads AIVMM_SIMULATE itself: the node's environment decides what it simulates.
        self._vmm = VMM(simulate=simulate)
        self._models: dict[str, Any] = {}
        self._cache = pathlib.Path(tempfile.gettempdir()) / "aivmm-cluster-models"

    def describe(self) -> dict[str, Any]:
        import ray

        return {
            "node_id": self.node_id,
            "running_on": ray.get_runtime_context().get_node_id(),  # proves the pinning held
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "simulate": os.environ.get("AIVMM_SIMULATE", ""),
            "devices": [d.to_json() for d in self._vmm.devices],
        }

    def _local_file(self, path: str, sha256: str, blob: list[Any]) -> str:
        """The model file on this node: the head's path when it holds the same bytes, else a copy
        fetched from the object store into a cache keyed by content hash."""
        p = pathlib.Path(path)
        if p.is_file() and (not sha256 or file_sha256(p) == sha256):
            return str(p)
        import ray

        target = self._cache / f"{sha256 or 'unhashed'}{p.suffix or '.onnx'}"
        if not target.is_file():
            self._cache.mkdir(parents=True, exist_ok=True)
            data = ray.get(blob[0])
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return str(target)

    def deploy(
        self,
        name: str,
        path: str,
        sha256: str,
        blob: list[Any],
        device: str,
        backend: str,
        constraints: Mapping[str, Any] | None,
        batching: Any,
        replicas: int,
        measure: bool,
    ) -> dict[str, Any]:
        """Load ``name`` on this node's ``device`` (pinned, strict: the head already chose it)."""

        key = _key(name, device)
        local = self._local_file(path, sha256, blob)
        model = self._vmm.deploy(local, constraints, device=device, backend=backend, strict=True, name=key,
                                 batching=batching, replicas=replicas, measure=measure)
        self._models[key] = model
        return {"name": name, "placement": model.plan.chosen.config.label(), "replicas": replicas}

    def infer(self, name: str, device: str, feeds: Mapping[str, Any], priority: int = 0,
                    deadline_ms: float | None = None) -> dict[str, Any]:
        model = self._models.get(_key(name, device))
        if model is None:
            raise ModelNotFoundError(f"model {name!r} is not loaded on {device} of node {self.node_id[:8]}")
        return model.execute(feeds, priority=priority, deadline_ms=deadline_ms)

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
