"""``ClusterVMM``: the VMM surface (deploy / execute / unload / status) over a Ray cluster.

A client of the cluster-wide registry (``_registry``): joining creates the registry if no one has
yet, or finds it; deploying asks it to place the model; every client sees the same models and
routes requests itself, straight to the node agents. Any number of clients (``aivmm serve --ray``
on several nodes, Python programs) share one set of models.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aivmm.cluster._channel import ChannelPool
from aivmm.cluster._model import ClusterModel
from aivmm.cluster._ray import connect, ray_module, unwrap
from aivmm.cluster._registry import REGISTRY_NAME, Registry
from aivmm.devices import Device
from aivmm.errors import AivmmError, ConfigError, ModelClosedError, ModelNotFoundError
from aivmm.models import ModelSpec
from aivmm.options import DeployOptions, coerce_options
from aivmm.planner.constraints import Constraints

log = logging.getLogger(__name__)

# Deploy options the cluster does not carry to its nodes (a cluster deploy refuses them, never drops them).
_LOCAL_ONLY = ("isolation", "sample_inputs", "example_inputs", "fast_start", "replan_on_first_request")

# Requests in flight from one client at once (each holds a thread while its node computes).
CLIENT_THREADS = 64
# How long a node this client saw break stays out of its routing while the registry still lists it.
LOST_MEMORY_S = 30.0


class ClusterVMM:
    """Deploys models across every node of a Ray cluster; the server runs on it like on a VMM.

    ``address``: ``None`` (``$RAY_ADDRESS``, else a new local Ray), ``"auto"`` (``$RAY_ADDRESS`` or
    the cluster ``ray start`` started on this machine), ``"HOST:PORT"``, ``"ray://…"``.
    ``node_ip_address``: the IP of the local node to attach to, when this machine has several.
    ``simulate``: per node label or Ray node id, a simulate spec for that node's agent (used by
    the client that creates the registry; otherwise each node's own ``AIVMM_SIMULATE`` applies).
    ``replace_timeout_s`` bounds how long a request waits for a lost model to be re-placed;
    ``call_timeout_s`` bounds one call; ``claim_timeout_s`` how long Ray may take to reserve a device
    before it counts as held by other work. The settings of the client that creates the registry
    apply to it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        node_ip_address: str | None = None,
        namespace: str = "aivmm",
        simulate: Mapping[str, str] | None = None,
        monitor_interval_s: float = 0.5,
        start_timeout_s: float = 120.0,
        replace_timeout_s: float = 60.0,
        call_timeout_s: float = 120.0,
        claim_timeout_s: float = 10.0,
    ) -> None:
        self._owns_ray = connect(address, node_ip_address=node_ip_address, namespace=namespace)
        self._ray = ray_module()
        self.namespace = namespace
        self.replace_timeout_s = replace_timeout_s
        self.call_timeout_s = call_timeout_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._pools: dict[tuple[str, int], ChannelPool] = {}
        self._lost: dict[str, float] = {}  # node label -> when this client saw it break
        self._models: dict[str, ClusterModel] = {}
        self._snapshot: dict[str, Any] = {"version": -1, "models": {}, "devices": [], "nodes": []}
        self._closed = False
        self.executor = concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="aivmm-cluster")
        self._registry_args = (
            dict(simulate or {}),
            monitor_interval_s,
            start_timeout_s,
            call_timeout_s,
            claim_timeout_s,
        )
        self.start_timeout_s = start_timeout_s
        try:
            self._connect_registry()
        except Exception:
            self.close()
            raise
        self.refresh(force=True)
        self._stop = threading.Event()
        self._refresher = threading.Thread(
            target=self._refresh_loop, args=(monitor_interval_s,), name="aivmm-cluster-refresh", daemon=True
        )
        self._refresher.start()

    # -- the registry's view -----------------------------------------------------------------------
    def _connect_registry(self) -> None:
        """Find the cluster's registry, or create it (pinned to the head node: it must outlive any
        worker; detached: it must outlive this process; get_if_exists: every client finds the same)."""
        self.registry = (
            self._ray.remote(Registry)
            .options(
                name=REGISTRY_NAME,
                namespace=self.namespace,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=32,
                resources={"node:__internal_head__": 0.001},
            )
            .remote(*self._registry_args)
        )
        try:
            hello = self._ray.get(self.registry.hello.remote(), timeout=self.start_timeout_s)
        except Exception as exc:
            raise ConfigError(f"the aivmm registry did not start on the cluster: {unwrap(exc)}") from exc
        with self._lock:
            self._authkey = hello["authkey"]
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:  # a new registry has new agents' keys: old connections are useless
            pool.close()

    def refresh(self, force: bool = False) -> None:
        """Take the registry's latest view (models, copies, devices) if it changed. A registry that
        died is replaced (a new one starts empty: the models it had are gone, their handles closed)."""
        from ray.exceptions import RayActorError

        since = -1 if force else self._snapshot["version"]
        try:
            snap = self._ray.get(self.registry.snapshot.remote(since), timeout=self.call_timeout_s)
        except RayActorError:
            log.warning("the aivmm registry died; starting or finding a new one")
            self._connect_registry()
            snap = self._ray.get(self.registry.snapshot.remote(-1), timeout=self.call_timeout_s)
        except Exception as exc:
            raise unwrap(exc) from exc
        if snap is None:
            return
        with self._lock:
            self._snapshot = snap
            listed = {c["node"] for m in snap["models"].values() for c in m["copies"]}
            listed |= {n["node"] for n in snap["nodes"]}
            now = time.monotonic()
            # Forget a loss once the registry has dropped the node too, or kept it for long (a
            # false alarm: the registry found its agent answering).
            for label in [n for n, t in self._lost.items() if n not in listed or now - t > LOST_MEMORY_S]:
                del self._lost[label]
            models = dict(self._models)
        for name, handle in models.items():
            record = snap["models"].get(name)
            handle.sync(record if record is not None else {**handle.record, "closed": True, "copies": []})

    def _refresh_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:  # the registry busy or restarting: the next round retries
                log.debug("refresh failed: %s", exc)

    def pool(self, endpoint: tuple[str, int]) -> ChannelPool:
        with self._lock:
            pool = self._pools.get(endpoint)
            if pool is None or pool.lost:
                pool = self._pools[endpoint] = ChannelPool(endpoint, self._authkey)
            return pool

    def lost_nodes(self) -> set[str]:
        with self._lock:
            return set(self._lost)

    def node_lost(self, label: str, reason: str) -> None:
        """A request found ``label``'s agent gone: stop routing there and tell the registry (once)."""
        with self._lock:
            first = label not in self._lost
            self._lost[label] = time.monotonic()
            models = list(self._models.values())
            endpoints = {tuple(n["endpoint"]) for n in self._snapshot["nodes"] if n["node"] == label}
            pools = [p for e, p in self._pools.items() if e in endpoints]
        for model in models:
            model.router.drop_node(label)
        for pool in pools:
            pool.close()  # requests waiting on it end now instead of at their timeout
        if first:
            self.registry.report_lost.remote(label, reason)

    # -- the VMM surface ---------------------------------------------------------------------------
    @property
    def devices(self) -> tuple[Device, ...]:
        with self._lock:
            docs = list(self._snapshot["devices"])
        return tuple(Device.from_json(d, source="registry") for d in docs)

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._snapshot["nodes"])

    def deploy(
        self,
        model: str | os.PathLike[str] | ModelSpec,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        options: DeployOptions | None = None,
        device: str | None = None,
        backend: str | None = None,
        strict: bool = False,
        name: str | None = None,
        batching: Any = None,
        replicas: int = 1,
        measure: bool = True,
    ) -> ClusterModel:
        """Place the model on the cluster (or hold the same model another client placed under the
        same name). The registry plans over every node's devices from the cost model, holds each
        device it uses with a Ray placement group, and the chosen nodes load (and, with
        ``measure``, measure and cache) their pinned candidate themselves. The options are one
        DeployOptions (``options=`` or the separate keywords), sent to the registry as plain data."""
        if self._closed:
            raise ModelClosedError("this ClusterVMM was closed")
        opts = coerce_options(
            options,
            constraints,
            device=device,
            backend=backend,
            strict=strict,
            name=name,
            batching=batching,
            replicas=replicas,
            measure=measure,
        )
        local_only = [k for k in _LOCAL_ONLY if getattr(opts, k) not in (None, False)]
        if local_only:
            raise ConfigError(f"a cluster deploy does not take {local_only}: they apply to a local VMM only")
        from aivmm.models import load

        spec = model if isinstance(model, ModelSpec) else load(model)
        if not isinstance(spec.source, str | os.PathLike):
            raise ConfigError(f"model {spec.name!r}: a cluster deploys ONNX files; export the module to ONNX first")
        blob = self._ray.put(pathlib.Path(str(spec.source)).read_bytes())
        try:
            record = self._ray.get(
                self.registry.deploy.remote(
                    self.holder,
                    str(spec.source),
                    spec.sha256 or "",
                    [blob],
                    opts.replace(name=opts.name or spec.name).to_mapping(),
                ),
                timeout=self.call_timeout_s * 2,
            )
        except Exception as exc:
            raise unwrap(exc) from None
        self.refresh()
        return self._handle(record["name"], record, spec)

    def _handle(self, name: str, record: Mapping[str, Any], spec: ModelSpec | None = None) -> ClusterModel:
        from aivmm.planner import Plan

        with self._lock:
            handle = self._models.get(name)
        if handle is not None:
            handle.sync(record)
            return handle
        if spec is None:
            from aivmm.cluster._agent import local_copy
            from aivmm.models import load

            blob = self._ray.get(self.registry.model_file.remote(name), timeout=self.call_timeout_s)
            spec = load(local_copy(record["path"], record["sha256"], blob))
        handle = ClusterModel(self, name, spec, Plan.from_json(record["plan"], spec), record)
        with self._lock:
            return self._models.setdefault(name, handle)

    def get(self, name: str) -> ClusterModel:
        """A model deployed on the cluster by any client."""
        self.refresh()
        with self._lock:
            record = self._snapshot["models"].get(name)
            known = sorted(self._snapshot["models"])
        if record is None:
            raise ModelNotFoundError(f"no deployed model {name!r} on the cluster; deployed: {known or 'none'}")
        return self._handle(name, record)

    def models(self) -> list[str]:
        self.refresh()
        with self._lock:
            return sorted(self._snapshot["models"])

    def unload(self, name: str, *, drain: bool = True) -> None:
        """Release this client's hold on ``name``; the model is unloaded when no client holds it."""
        with self._lock:
            handle = self._models.pop(name, None)
        if handle is not None:
            handle.closed = True
        try:
            self._ray.get(self.registry.release.remote(self.holder, name, drain), timeout=self.call_timeout_s)
        except Exception as exc:
            raise unwrap(exc) from None

    def status(self) -> dict[str, Any]:
        """The registry's status (every node's ledger, models, claims, events) with this client's routing."""
        try:
            doc = self._ray.get(self.registry.status.remote(), timeout=self.call_timeout_s)
        except Exception as exc:
            raise unwrap(exc) from None
        with self._lock:
            handles = dict(self._models)
        for name, entry in doc["models"].items():
            if name in handles:
                entry.update(handles[name].stats())
        return doc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._refresher.join(timeout=5.0)
        try:
            self._ray.get(self.registry.release_all.remote(self.holder), timeout=self.call_timeout_s)
        except Exception as exc:  # the registry gone with the cluster: nothing left to release
            log.warning("releasing this client's models: %s", exc if isinstance(exc, AivmmError) else unwrap(exc))
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self) -> ClusterVMM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
