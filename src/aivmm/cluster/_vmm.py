"""``ClusterVMM``: the VMM surface (deploy / execute / unload / status) over a Ray cluster.

Centralised here (in the process that deploys, e.g. the server): the device registry (every
node's devices under cluster-unique ids), planning with the one aivmm planner, the placement
table and routing. Per node (the agents): discovery, model loading, the runtime engine.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from aivmm.cluster._agent import NodeAgent
from aivmm.cluster._ids import node_label, qualify, split
from aivmm.cluster._model import ClusterModel
from aivmm.cluster._placement import choose_devices, device_classes, on_device
from aivmm.cluster._ray import connect, is_node_loss, ray_module, unwrap
from aivmm.cluster._routing import Target
from aivmm.devices._types import Device
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeviceNotFoundError,
    ModelClosedError,
    ModelNotFoundError,
    PlanningError,
)
from aivmm.models._spec import ModelSpec
from aivmm.planner.constraints import Constraints, coerce_constraints

log = logging.getLogger(__name__)

AGENT_PREFIX = "aivmm-agent-"
# Requests a node agent runs at once (threads of the actor); more wait in Ray's queue for the actor.
AGENT_THREADS = 64


@dataclasses.dataclass(eq=False)
class Node:
    """A node as the head knows it: its agent and its devices (cluster ids)."""

    node_id: str
    label: str
    agent: Any
    devices: tuple[Device, ...]
    hostname: str = ""
    alive: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"node": self.label, "node_id": self.node_id, "hostname": self.hostname, "alive": self.alive,
                "devices": [d.id for d in self.devices]}


class ClusterVMM:
    """Deploys models across every node of a Ray cluster; the server runs on it like on a VMM.

    ``address``: a Ray address (``"127.0.0.1:6379"``, ``"auto"``, ``"ray://…"``); None joins the
    Ray already initialised in this process or starts a local one. ``simulate``: per node label or
    Ray node id, a simulate spec for that node's agent (otherwise each node's own
    ``AIVMM_SIMULATE`` applies). ``replace_timeout_s`` bounds how long a request waits for a lost
    model to be re-placed; ``call_timeout_s`` bounds one remote call.
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
    ) -> None:
        self._owns_ray = connect(address, node_ip_address=node_ip_address, namespace=namespace)
        self._ray = ray_module()
        self.namespace = namespace
        self._simulate = dict(simulate or {})
        self.start_timeout_s = start_timeout_s
        self.replace_timeout_s = replace_timeout_s
        self.call_timeout_s = call_timeout_s
        self._lock = threading.RLock()
        self._nodes: dict[str, Node] = {}  # by label
        self._skipped: dict[str, str] = {}  # node id -> why it has no agent
        self._models: dict[str, ClusterModel] = {}
        self._blobs: dict[str, Any] = {}  # sha256 -> object ref of the model file's bytes
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self._replacer = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="aivmm-replace")
        self._closed = False
        # Agents are this ClusterVMM's own: another ingress closing its agents must not stop ours.
        self._token = uuid.uuid4().hex[:8]
        self._stop = threading.Event()
        self._attach_nodes()
        if not self._nodes:
            raise DeviceNotFoundError(f"no node of the Ray cluster runs an aivmm agent: {self._skipped or 'no nodes'}")
        self._monitor = threading.Thread(target=self._watch, args=(monitor_interval_s,), name="aivmm-cluster-monitor",
                                         daemon=True)
        self._monitor.start()

    # -- nodes -------------------------------------------------------------------------------------
    def _alive_node_ids(self) -> set[str]:
        return {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}

    def _attach_nodes(self) -> None:
        """Start (or find) an agent on every live node that has none yet, and register its devices."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        known = {n.node_id for n in self._nodes.values()}
        fresh = sorted(self._alive_node_ids() - known - set(self._skipped))
        if not fresh:
            return
        actor = self._ray.remote(NodeAgent)
        pending = {}
        for node_id in fresh:
            simulate = self._simulate.get(node_label(node_id)) or self._simulate.get(node_id)
            handle = actor.options(
                name=f"{AGENT_PREFIX}{self._token}-{node_id}", namespace=self.namespace,
                num_cpus=0, max_concurrency=AGENT_THREADS, max_restarts=0,
                # soft=False: an agent must never run anywhere but its node, or it would report the wrong devices.
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(node_id, simulate)
            pending[node_id] = (handle, handle.describe.remote())
        for node_id, (handle, ref) in pending.items():
            try:
                info = self._ray.get(ref, timeout=self.start_timeout_s)
            except Exception as exc:  # a node without a working aivmm is left out, with the reason kept
                why = str(unwrap(exc)).splitlines()[0] if str(exc) else type(exc).__name__
                self._skipped[node_id] = why
                log.warning("node %s: no aivmm agent (%s)", node_label(node_id), why)
                continue
            label = node_label(node_id)
            devices = tuple(qualify(label, Device.from_json(d, source=f"agent {label}")) for d in info["devices"])
            with self._lock:
                self._nodes[label] = Node(node_id, label, handle, devices, info.get("hostname", ""))
            self._event("node-joined", node=label, devices=[d.id for d in devices])

    def _watch(self, interval: float) -> None:
        """Membership: nodes that died lose their models (re-placed), nodes that joined get agents."""
        while not self._stop.wait(interval):
            try:
                alive = self._alive_node_ids()
                with self._lock:
                    lost = [n.label for n in self._nodes.values() if n.alive and n.node_id not in alive]
                for label in lost:
                    self.node_lost(label, "Ray reports the node dead")
                self._attach_nodes()
            except Exception:  # the monitor must outlive a flaky GCS call; the next round retries
                log.exception("cluster monitor round failed")

    def node_lost(self, label: str, reason: str) -> None:
        """Forget ``label`` and re-place every model that had a replica there (idempotent)."""
        with self._lock:
            node = self._nodes.get(label)
            if node is None or not node.alive:
                return
            node.alive = False
            del self._nodes[label]
            self._skipped[node.node_id] = f"lost: {reason}"
            affected = []
            for model in self._models.values():
                gone = model.router.drop_node(label)
                if gone:
                    affected.append((model, sum(t.slots for t in gone)))
        self._event("node-lost", node=label, reason=reason, models=[m.name for m, _ in affected])
        log.warning("node %s lost (%s); re-placing %d model(s)", label, reason, len(affected))
        for model, count in affected:
            try:
                self._replacer.submit(self._replace, model, count, label)
            except RuntimeError:  # closing: nothing is re-placed any more, waiting requests learn why
                model.failure = f"lost {label} while the cluster VMM was closing"
                model.notify()

    def _replace(self, model: ClusterModel, count: int, lost: str) -> None:
        try:
            plan, classes = self._plan(model.spec, model.deploy_args)
            used = {t.device for t in model.router.targets()}
            targets = self._load(model.name, model.spec, plan.ranked(), classes, count, model.deploy_args, avoid=used)
            if not targets and not used:
                raise PlanningError("no feasible device is left in the cluster")
        except Exception as exc:
            model.failure = f"re-placement after losing {lost} failed: {exc}"
            self._event("replace-failed", model=model.name, node=lost, reason=str(exc))
            log.error("model %r: %s", model.name, model.failure)
        else:
            if model.closed:  # unloaded meanwhile: give the fresh copies back
                self._unload_targets(model.name, targets)
                return
            for t in targets:
                model.router.add(t)
            model.failure = ""
            entry = {"lost": lost, "to": [t.device for t in targets], "time": time.time(),
                     "note": "" if targets else f"no other feasible device: the copies on {sorted(used)} serve"}
            model.replacements.append(entry)
            self._event("replaced", model=model.name, **entry)
        finally:
            model.notify()

    def _event(self, kind: str, **fields: Any) -> None:
        self.events.append({"event": kind, "time": time.time(), **fields})

    # -- the VMM surface ---------------------------------------------------------------------------
    @property
    def devices(self) -> tuple[Device, ...]:
        with self._lock:
            return tuple(d for n in self._nodes.values() for d in n.devices)

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [n.to_json() for n in self._nodes.values()]

    def deploy(
        self,
        model: str | os.PathLike[str] | ModelSpec,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        device: str | None = None,
        backend: str | None = None,
        strict: bool = False,
        name: str | None = None,
        batching: Any = None,
        replicas: int = 1,
        measure: bool = True,
    ) -> ClusterModel:
        """Plan over every node's devices, load on the chosen nodes; replicas go to distinct devices
        (and so across nodes) first. ``measure`` applies on each node to its pinned candidate: the
        head plans from the cost model, as it cannot run a remote device."""
        if self._closed:
            raise ModelClosedError("this ClusterVMM was closed")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"replicas must be a positive integer, got {replicas!r}")
        from aivmm.models import load

        spec = model if isinstance(model, ModelSpec) else load(model)
        if not isinstance(spec.source, str | os.PathLike):
            raise ConfigError(f"model {spec.name!r}: a cluster deploys ONNX files; export the module to ONNX first")
        name = name or spec.name
        with self._lock:
            if name in self._models:
                raise ConfigError(f"a model named {name!r} is already deployed; pass name= or unload it first")
        if device is not None:
            split(device)
            if device not in {d.id for d in self.devices}:
                raise DeviceNotFoundError(f"unknown device {device!r}; the cluster has: {[d.id for d in self.devices]}")
        cons = coerce_constraints(constraints)
        args = {"constraints": cons, "device": device, "backend": backend, "strict": strict,
                "batching": batching, "measure": measure}
        plan, classes = self._plan(spec, args)
        ranked = plan.replicas(replicas) if replicas > 1 else (plan.chosen,)
        targets = self._load(name, spec, ranked, classes, replicas, args)
        handle = ClusterModel(self, name, spec, on_device(plan, targets[0].device), replicas, args)
        for t in targets:
            handle.router.add(t)
        with self._lock:
            self._models[name] = handle
        self._event("deployed", model=name, devices=[t.device for t in targets])
        return handle

    def _plan(self, spec: ModelSpec, args: Mapping[str, Any]) -> tuple[Any, dict[str, list[str]]]:
        """The planner's choice over one device per class of identical devices, and each class's members.

        Identical devices on many nodes would be identical candidates: planning them once keeps
        planning time proportional to the kinds of hardware, not to the size of the cluster.
        """
        from aivmm.planner import plan

        devices = self.devices
        if not devices:
            raise PlanningError("no live node with devices in the cluster")
        pinned = args["device"] if args["device"] in {d.id for d in devices} else None
        if args["device"] is not None and pinned is None and args["strict"]:
            raise PlanningError(f"pinned device {args['device']} left the cluster (strict placement)")
        classes = device_classes(devices, keep=pinned)
        reps = [d for d in devices if d.id in classes]
        chosen = plan(spec, reps, args["constraints"], device=pinned, backend=args["backend"],
                      strict=args["strict"], measure=False)
        if pinned is not None:
            classes = {k: ([pinned] if k == pinned else v) for k, v in classes.items()}
        return chosen, classes

    def _copies(self) -> collections.Counter[str]:
        """How many model copies each device holds: new copies go to the emptiest device of a class."""
        with self._lock:
            return collections.Counter(t.device for m in self._models.values() for t in m.router.targets())

    def _load(self, name: str, spec: ModelSpec, ranked: Sequence[Any], classes: Mapping[str, list[str]],
              count: int, args: Mapping[str, Any], avoid: AbstractSet[str] = frozenset()) -> list[Target]:
        """Load ``count`` replicas: candidates in ``ranked`` order, each on the members of its device
        class (emptiest first), distinct devices not in ``avoid`` first, then the best one again;
        one agent call per device."""
        picks = choose_devices(ranked, classes, count, avoid, self._copies())
        if not picks:  # every feasible device already holds a copy: those copies carry the load
            return []
        # One engine entry per device: extra replicas on a device share its entry (and its backend).
        groups: dict[str, list[Any]] = collections.defaultdict(list)
        for cand, dev in picks:
            groups[dev].append(cand)
        path = str(spec.source)
        blob = self._blob(spec)
        calls = []
        with self._lock:
            nodes = dict(self._nodes)
        for dev, cands in groups.items():
            backend = cands[0].config.backend
            label, local = split(dev)
            node = nodes.get(label)
            if node is None:
                raise PlanningError(f"node {label} left the cluster while {name!r} was being placed")
            ref = node.agent.deploy.remote(name, path, spec.sha256 or "", [blob], local, backend,
                                           args["constraints"],
                                           args["batching"], len(cands), args["measure"])
            calls.append((Target(label, dev, local, node.agent, slots=len(cands)), ref))
        loaded: list[Target] = []
        failure: BaseException | None = None
        for target, ref in calls:
            try:
                self._ray.get(ref, timeout=self.call_timeout_s)
                loaded.append(target)
            except Exception as exc:
                if is_node_loss(exc):
                    self.node_lost(target.node, f"deploy of {name!r} failed: {type(exc).__name__}")
                failure = failure or unwrap(exc)
        if failure is not None:
            self._unload_targets(name, loaded)
            if isinstance(failure, AivmmError):
                raise failure
            raise PlanningError(f"model {name!r} could not be loaded on the cluster: {failure!r}")
        return loaded

    def _blob(self, spec: ModelSpec) -> Any:
        """The model file's bytes in the object store, once per content (nodes without the file fetch it)."""
        key = spec.sha256 or str(spec.source)
        with self._lock:
            ref = self._blobs.get(key)
        if ref is None:
            ref = self._ray.put(pathlib.Path(str(spec.source)).read_bytes())
            with self._lock:
                self._blobs[key] = ref
        return ref

    def _unload_targets(self, name: str, targets: Sequence[Target], drain: bool = True) -> None:
        refs = [t.agent.unload.remote(name, t.local, drain) for t in targets]
        for ref in refs:
            try:
                self._ray.get(ref, timeout=self.call_timeout_s)
            except Exception as exc:  # a node that is gone has unloaded it already
                log.info("unload of %r on a node failed: %s", name, exc)

    def get(self, name: str) -> ClusterModel:
        with self._lock:
            try:
                return self._models[name]
            except KeyError:
                raise ModelNotFoundError(
                    f"no deployed model {name!r}; deployed: {sorted(self._models) or 'none'}") from None

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def unload(self, name: str, *, drain: bool = True) -> None:
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            return
        model.closed = True
        model.notify()
        self._unload_targets(name, model.router.targets(), drain)

    def status(self) -> dict[str, Any]:
        """Every node's engine status with device ids made cluster-unique, plus nodes, routing and events."""
        with self._lock:
            nodes = list(self._nodes.values())
            models = dict(self._models)
        refs = [(n, n.agent.status.remote()) for n in nodes]
        devices: dict[str, Any] = {}
        per_node: dict[str, Any] = {}
        for node, ref in refs:
            try:
                doc = self._ray.get(ref, timeout=10.0)
            except Exception as exc:
                per_node[node.label] = {"error": str(unwrap(exc)).splitlines()[0]}
                continue
            for dev_id, d in (doc.get("devices") or {}).items():
                devices[f"{node.label}/{dev_id}"] = d
            per_node[node.label] = {"models": doc.get("models", {})}
        return {
            "devices": devices,
            "models": {n: m.stats() for n, m in sorted(models.items())},
            "nodes": [n.to_json() for n in nodes],
            "node_status": per_node,
            "skipped_nodes": dict(self._skipped),
            "events": list(self.events)[-32:],
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for name in self.models():
            try:
                self.unload(name, drain=True)
            except AivmmError as exc:
                log.warning("unloading %r at close: %s", name, exc)
        self._monitor.join(timeout=5.0)
        self._replacer.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            agents = [n.agent for n in self._nodes.values()]
            self._nodes.clear()
        for agent in agents:
            try:
                self._ray.kill(agent)
            except Exception as exc:  # already gone with its node
                log.debug("killing an agent: %s", exc)
        if self._owns_ray:
            self._ray.shutdown()

    def __enter__(self) -> ClusterVMM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
