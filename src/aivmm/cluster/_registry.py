"""The cluster-wide registry: one detached named actor (``aivmm-registry`` in namespace ``aivmm``).

It is the one authority of an aivmm cluster: the node agents (one detached actor per node), every
node's devices under cluster ids, the devices published as Ray resources, the models deployed
(with their plans, copies, holders and re-placements), the Ray placement groups that hold the
devices in use, and the membership monitor that re-places the models of a lost node. Every
``ClusterVMM`` (an ``aivmm serve --ray``, a Python client, on any node) talks to the same one, so
they all see and route to the same models; requests themselves go straight to the agents.

It is pinned to the head node (it must outlive any worker) and, being detached, outlives the
process that created it: models stay deployed until the last holder releases them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from aivmm.cluster import _resources
from aivmm.cluster._agent import NodeAgent, local_copy
from aivmm.cluster._channel import answers
from aivmm.cluster._ids import node_label, qualify, split
from aivmm.cluster._placement import choose_devices, device_classes, on_device
from aivmm.cluster._ray import is_node_loss, unwrap
from aivmm.devices import Device
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeviceNotFoundError,
    ModelNotFoundError,
    PlanningError,
    ResourceError,
)
from aivmm.models import ModelSpec
from aivmm.options import DeployOptions

log = logging.getLogger(__name__)

REGISTRY_NAME = "aivmm-registry"
AGENT_PREFIX = "aivmm-agent-"
CLAIM_PREFIX = "aivmm-claim-"
# Control calls an agent runs at once (deploys, unloads, status); requests use its channel.
AGENT_THREADS = 16
# How long Ray may take to reserve a device's claim before the device counts as held by others.
CLAIM_TIMEOUT_S = 10.0


@dataclasses.dataclass(eq=False)
class Node:
    node_id: str
    label: str
    agent: Any
    devices: tuple[Device, ...]  # cluster ids
    endpoint: tuple[str, int]
    hostname: str = ""
    cache_dir: str = ""
    resources: str = ""  # "declared" (ray start --resources) or "published" (by the registry)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.label,
            "node_id": self.node_id,
            "hostname": self.hostname,
            "devices": [d.id for d in self.devices],
            "endpoint": list(self.endpoint),
            "cache_dir": self.cache_dir,
            "resources": self.resources,
        }


@dataclasses.dataclass(eq=False)
class Copy:
    """One device's copy of a model (one engine entry on its node)."""

    node: str
    device: str
    local: str
    slots: int
    endpoint: tuple[str, int]
    load: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the agent reported

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "device": self.device,
            "local": self.local,
            "slots": self.slots,
            "endpoint": list(self.endpoint),
            "load": dict(self.load),
        }


@dataclasses.dataclass(eq=False)
class Entry:
    name: str
    spec: ModelSpec
    path: str
    blob: Any
    options: DeployOptions
    plan: Any
    copies: list[Copy] = dataclasses.field(default_factory=list)
    holders: set[str] = dataclasses.field(default_factory=set)
    failure: str = ""
    replacements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    closed: bool = False

    def to_json(self) -> dict[str, Any]:
        plan = on_device(self.plan, self.copies[0].device) if self.copies else self.plan
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.spec.sha256,
            "replicas": self.options.replicas,
            "plan": plan.to_json(),
            "copies": [c.to_json() for c in self.copies],
            "failure": self.failure,
            "replacements": list(self.replacements),
            "holders": len(self.holders),
            "closed": self.closed,
        }


class Registry:
    """The actor's body (run with ``max_concurrency``: its methods are called from many threads)."""

    def __init__(
        self,
        simulate: Mapping[str, str] | None = None,
        monitor_interval_s: float = 0.5,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 120.0,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
    ) -> None:
        import ray

        self._ray = ray
        self._authkey = secrets.token_bytes(32)
        self._simulate = dict(simulate or {})
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.claim_timeout_s = claim_timeout_s
        self._lock = threading.RLock()
        self._version = 0
        self._nodes: dict[str, Node] = {}
        self._skipped: dict[str, str] = {}
        self._models: dict[str, Entry] = {}
        self._pending: dict[str, threading.Event] = {}
        self._claims: dict[str, Any] = {}  # cluster device id -> placement group
        # Claims are made one at a time (two deploys must not both reserve the same device), and a
        # claim whose first copy is still loading is not idle: devices -> loads in progress.
        self._claim_lock = threading.Lock()
        self._loading: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=256)
        self._replacer = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="aivmm-replace")
        self._stop = threading.Event()
        # Claims are named per namespace: registries of other namespaces keep theirs.
        self._claim_prefix = f"{CLAIM_PREFIX}{ray.get_runtime_context().namespace}/"
        self._remove_stale_claims()
        self._attach_nodes()
        threading.Thread(target=self._watch, args=(monitor_interval_s,), name="aivmm-monitor", daemon=True).start()

    # -- what clients read -------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return {"authkey": self._authkey, "version": self._version}

    def snapshot(self, since: int = -1) -> dict[str, Any] | None:
        """Every model's copies and endpoints; None when nothing changed since version ``since``."""
        with self._lock:
            if since == self._version:
                return None
            return {
                "version": self._version,
                "models": {n: e.to_json() for n, e in self._models.items()},
                "devices": [d.to_json() for n in self._nodes.values() for d in n.devices],
                "nodes": [n.to_json() for n in self._nodes.values()],
            }

    def model_file(self, name: str) -> list[Any]:
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"no deployed model {name!r}")
        return [entry.blob]

    def _bump(self) -> None:
        with self._lock:
            self._version += 1

    def _event(self, kind: str, **fields: Any) -> None:
        self.events.append({"event": kind, "time": time.time(), **fields})
        self._bump()

    # -- nodes -------------------------------------------------------------------------------------
    def _alive(self) -> dict[str, dict[str, Any]]:
        return {n["NodeID"]: n for n in self._ray.nodes() if n.get("Alive")}

    def _attach_nodes(self) -> None:
        """Start (or find) an agent on every live node that has none yet; publish its devices."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = self._alive()
        known = {n.node_id for n in self._nodes.values()}
        fresh = sorted(set(alive) - known - set(self._skipped))
        if not fresh:
            return
        actor: Any = self._ray.remote(NodeAgent)
        pending = {}
        for node_id in fresh:
            simulate = self._simulate.get(node_label(node_id)) or self._simulate.get(node_id)
            handle = actor.options(
                name=f"{AGENT_PREFIX}{node_id}",
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=AGENT_THREADS,
                max_restarts=0,
                # soft=False: an agent must never run anywhere but its node, or it would report the wrong devices.
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(node_id, self._authkey, simulate)
            pending[node_id] = (handle, handle.adopt.remote(self._authkey))
        for node_id, (handle, ref) in pending.items():
            try:
                info = self._ray.get(ref, timeout=self.start_timeout_s)
                local = tuple(Device.from_json(d, source=f"agent {node_label(node_id)}") for d in info["devices"])
                how = self._publish(node_id, alive[node_id].get("Resources", {}), local)
            except Exception as exc:  # a node without a working aivmm is left out, with the reason kept
                why = str(unwrap(exc)).splitlines()[0] if str(exc) else type(exc).__name__
                self._skipped[node_id] = why
                log.warning("node %s: no aivmm agent (%s)", node_label(node_id), why)
                continue
            label = node_label(node_id)
            devices = tuple(qualify(label, d) for d in local)
            with self._lock:
                self._nodes[label] = Node(
                    node_id,
                    label,
                    handle,
                    devices,
                    tuple(info["endpoint"]),
                    info.get("hostname", ""),
                    info.get("cache_dir", ""),
                    how,
                )
            self._event("node-joined", node=label, devices=[d.id for d in devices], resources=how)

    def _publish(self, node_id: str, declared: Mapping[str, float], devices: Sequence[Device]) -> str:
        """Make the node's Ray resources list its aivmm devices; returns how they got there."""
        wanted = _resources.node_resources(devices)
        todo = _resources.missing(declared, wanted)
        if not todo:
            return "declared"
        # Ray's GCS resizes a live raylet's resources (what its autoscaler uses); the public way is
        # `ray start --resources "$(aivmm cluster resources)"`, which makes this a no-op.
        worker: Any = self._ray._private.worker.global_worker
        gcs = worker.gcs_client
        try:
            gcs.resize_raylet_resource_instances(node_id, todo)
        except Exception as exc:
            raise ConfigError(
                f"the node's aivmm resources are not declared and publishing them failed ({exc!r}): "
                'start it with ray start --resources "$(aivmm cluster resources)"'
            ) from exc
        return "published"

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.check_nodes()
                self._attach_nodes()
            except Exception:  # the monitor must outlive a flaky GCS call; the next round retries
                log.exception("cluster monitor round failed")

    def check_nodes(self) -> list[str]:
        """Nodes Ray reports dead lose their models (re-placed); returns the labels lost."""
        alive = self._alive()
        with self._lock:
            lost = [n.label for n in self._nodes.values() if n.node_id not in alive]
        for label in lost:
            self.node_lost(label, "Ray reports the node dead")
        return lost

    def report_lost(self, label: str, reason: str) -> bool:
        """A client's connection to ``label``'s agent broke: check at once instead of at the next round.

        The check is the path requests take: a handshake on the agent's channel (refused at once
        when its process is gone, as it is when its raylet dies; 2 s when it does not answer),
        rather than a Ray call, which waits for Ray's health checks (~15 s by default).
        """
        with self._lock:
            node = self._nodes.get(label)
        if node is None:
            return True
        if label in self.check_nodes():
            return True
        if answers(node.endpoint, self._authkey, timeout_s=2.0):
            return False
        self.node_lost(label, f"{reason}; its agent's channel does not answer")
        return True

    def node_lost(self, label: str, reason: str) -> None:
        """Forget ``label`` and re-place every model that had a copy there (idempotent)."""
        with self._lock:
            node = self._nodes.pop(label, None)
            if node is None:
                return
            self._skipped[node.node_id] = f"lost: {reason}"
            affected = []
            for entry in self._models.values():
                gone = [c for c in entry.copies if c.node == label]
                if gone:
                    entry.copies = [c for c in entry.copies if c.node != label]
                    affected.append((entry, sum(c.slots for c in gone)))
            claims = [self._claims.pop(d.id) for d in node.devices if d.id in self._claims]
        for pg in claims:  # Ray would otherwise try to reschedule the claim of a dead node forever
            self._remove_claim(pg)
        self._event("node-lost", node=label, reason=reason, models=[e.name for e, _ in affected])
        log.warning("node %s lost (%s); re-placing %d model(s)", label, reason, len(affected))
        for entry, count in affected:
            self._replacer.submit(self._replace, entry, count, label)

    def _replace(self, entry: Entry, count: int, lost: str) -> None:
        try:
            plan, classes = self._plan(entry.spec, entry.options)
            used = {c.device for c in entry.copies}
            copies = self._load(entry, plan.ranked(), classes, count, avoid=used)
            if not copies and not used:
                raise PlanningError("no feasible device is left in the cluster")
        except Exception as exc:
            entry.failure = f"re-placement after losing {lost} failed: {exc}"
            self._event("replace-failed", model=entry.name, node=lost, reason=str(exc))
            log.error("model %r: %s", entry.name, entry.failure)
            return
        if entry.closed:  # unloaded meanwhile: give the fresh copies back
            self._unload_copies(entry.name, copies)
            self._registered([c.device for c in copies])
            self._release_unused_claims()
            return
        with self._lock:
            entry.copies.extend(copies)
            self._registered([c.device for c in copies])
            entry.failure = ""
            record = {
                "lost": lost,
                "to": [c.device for c in copies],
                "time": time.time(),
                "note": "" if copies else f"no other feasible device: the copies on {sorted(used)} serve",
            }
            entry.replacements.append(record)
        self._event("replaced", model=entry.name, **record)

    # -- deploying ---------------------------------------------------------------------------------
    def devices(self) -> list[Device]:
        with self._lock:
            return [d for n in self._nodes.values() for d in n.devices]

    def deploy(
        self, holder: str, path: str, sha256: str, blob: list[Any], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Place the model (or hold the same model already placed under that name) for ``holder``;
        ``options`` is a DeployOptions as plain data (``to_mapping``)."""
        from aivmm.models import load

        opts = DeployOptions.from_mapping(options, source="cluster deploy")
        # The registry keeps its own copy of the bytes: the deploying process may exit, and a lost
        # node's models must still be loadable elsewhere.
        own = self._ray.put(self._ray.get(blob[0], timeout=self.call_timeout_s))
        spec = load(local_copy(path, sha256, [own]))
        name = opts.name or spec.name
        opts = opts.replace(name=name)
        device, replicas = opts.device, opts.replicas
        while True:
            with self._lock:
                entry = self._models.get(name)
                if entry is not None:
                    if entry.spec.sha256 != spec.sha256 or entry.options != opts:
                        raise ConfigError(
                            f"a model named {name!r} is already deployed on the cluster with "
                            "other content or settings; pass another name or unload it first"
                        )
                    entry.holders.add(holder)
                    self._bump()
                    return entry.to_json()
                busy = self._pending.get(name)
                if busy is None:
                    self._pending[name] = threading.Event()
                    break
            if not busy.wait(self.call_timeout_s):
                raise PlanningError(f"another deploy of {name!r} did not finish in {self.call_timeout_s:g} s")
        try:
            if device is not None:
                split(device)
                if device not in {d.id for d in self.devices()}:
                    raise DeviceNotFoundError(
                        f"unknown device {device!r}; the cluster has: {[d.id for d in self.devices()]}"
                    )
            plan, classes = self._plan(spec, opts)
            entry = Entry(name, spec, path, own, opts, plan, holders={holder})
            ranked = plan.replicas(replicas) if replicas > 1 else (plan.chosen,)
            entry.copies = self._load(entry, ranked, classes, replicas)
            with self._lock:
                self._models[name] = entry
                self._registered([c.device for c in entry.copies])
            self._event("deployed", model=name, devices=[c.device for c in entry.copies])
            return entry.to_json()
        finally:
            with self._lock:
                self._pending.pop(name).set()

    def _plan(self, spec: ModelSpec, options: DeployOptions) -> tuple[Any, dict[str, list[str]]]:
        """The planner's choice over one device per class of identical devices, and each class's members.

        Identical devices on many nodes would be identical candidates: planning them once keeps
        planning time proportional to the kinds of hardware, not to the size of the cluster. The
        registry plans from the cost model; each node measures its own device when it loads.
        """
        from aivmm.planner import plan

        devices = self.devices()
        if not devices:
            raise PlanningError("no live node with devices in the cluster")
        pinned = options.device if options.device in {d.id for d in devices} else None
        if options.device is not None and pinned is None and options.strict:
            raise PlanningError(f"pinned device {options.device} left the cluster (strict placement)")
        classes = device_classes(devices, keep=pinned)
        reps = [d for d in devices if d.id in classes]
        chosen = plan(spec, reps, options=options.replace(device=pinned, measure=False))
        if pinned is not None:
            classes = {k: ([pinned] if k == pinned else v) for k, v in classes.items()}
        return chosen, classes

    def _copies_per_device(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(c.device for e in self._models.values() for c in e.copies)

    def _claim(self, node: Node, device: Device) -> None:
        """Hold ``device`` in Ray's scheduler (once, while aivmm has models on it)."""
        with self._claim_lock:
            self._claim_locked(node, device)

    def _claim_locked(self, node: Node, device: Device) -> None:
        with self._lock:
            if device.id in self._claims:
                return
        from ray.util.placement_group import placement_group

        local = device.properties.get("local_id", split(device.id)[1])
        declared = self._alive().get(node.node_id, {}).get("Resources", {})
        bundle = _resources.claim(device, str(local), declared)
        pg = placement_group(
            [bundle],
            strategy="STRICT_PACK",
            lifetime="detached",
            name=f"{self._claim_prefix}{device.id}",
            bundle_label_selector=[{"ray.io/node-id": node.node_id}],
        )
        try:
            self._ray.get(pg.ready(), timeout=self.claim_timeout_s)
        except Exception as exc:
            self._remove_claim(pg)
            raise ResourceError(
                f"device {device.id} is held by other Ray work: Ray could not reserve {bundle} on node "
                f"{node.label} in {self.claim_timeout_s:g} s ({type(exc).__name__})"
            ) from None
        with self._lock:
            self._claims[device.id] = pg

    def _remove_stale_claims(self) -> None:
        """Claims a registry that died left behind (detached, so they outlive it) would hold their
        devices against this one: a starting registry owns no claim yet, so every aivmm claim goes."""
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table

        for pg_id, info in placement_group_table().items():
            if str(info.get("name", "")).startswith(self._claim_prefix) and info.get("state") != "REMOVED":
                self._remove_claim(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
                log.warning("removed claim %s left by an earlier registry", info.get("name"))

    def _remove_claim(self, pg: Any) -> None:
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(pg)
        except Exception as exc:  # already gone with its node
            log.debug("removing a claim: %s", exc)

    def _release_unused_claims(self) -> None:
        with self._claim_lock, self._lock:
            used = set(self._copies_per_device()) | {d for d, n in self._loading.items() if n > 0}
            idle = [d for d in self._claims if d not in used]
            pgs = [self._claims.pop(d) for d in idle]
        for pg in pgs:
            self._remove_claim(pg)

    def _load(
        self,
        entry: Entry,
        ranked: Sequence[Any],
        classes: Mapping[str, list[str]],
        count: int,
        avoid: AbstractSet[str] = frozenset(),
    ) -> list[Copy]:
        """Load ``count`` replicas (candidates in ``ranked`` order, each on the emptiest member of its
        device class, distinct devices not in ``avoid`` first); one claim and one agent call per device."""
        picks = choose_devices(ranked, classes, count, avoid, self._copies_per_device())
        if not picks:  # every feasible device already holds a copy: those copies carry the load
            return []
        groups: dict[str, list[Any]] = collections.defaultdict(list)
        for cand, dev in picks:
            groups[dev].append(cand)
        with self._lock:
            nodes = dict(self._nodes)
            by_id = {d.id: d for n in nodes.values() for d in n.devices}
        targets = []
        for dev, cands in groups.items():
            label, local = split(dev)
            node = nodes.get(label)
            if node is None:
                raise PlanningError(f"node {label} left the cluster while {entry.name!r} was being placed")
            targets.append((dev, cands, label, local, node))
        # Counted as loading before they are claimed, so no concurrent release takes a fresh claim
        # away; until the caller has registered the copies (_registered).
        with self._lock:
            self._loading.update(dev for dev, *_ in targets)
        try:
            for dev, _, _, _, node in targets:
                self._claim(node, by_id[dev])
        except Exception:
            self._registered([dev for dev, *_ in targets])
            self._release_unused_claims()  # the claims this call made, which no copy uses
            raise
        calls = []
        for dev, cands, label, local, node in targets:
            # Pinned and strict on the node: the registry already chose the device and backend.
            pinned = entry.options.replace(
                device=local, backend=cands[0].config.backend, strict=True, replicas=len(cands)
            )
            ref = node.agent.deploy.remote(
                entry.name, entry.path, entry.spec.sha256 or "", [entry.blob], pinned.to_mapping()
            )
            calls.append((Copy(label, dev, local, len(cands), node.endpoint), ref))
        loaded: list[Copy] = []
        failure: BaseException | None = None
        for copy, ref in calls:
            try:
                copy.load = self._ray.get(ref, timeout=self.call_timeout_s)
                loaded.append(copy)
            except Exception as exc:
                if is_node_loss(exc):
                    self._replacer.submit(self.node_lost, copy.node, f"deploy of {entry.name!r} failed")
                failure = failure or unwrap(exc)
        if failure is not None:
            self._unload_copies(entry.name, loaded)
            self._registered([c.device for c, _ in calls])
            self._release_unused_claims()
            if isinstance(failure, AivmmError):
                raise failure
            raise PlanningError(f"model {entry.name!r} could not be loaded on the cluster: {failure!r}")
        return loaded

    def _registered(self, devices: Sequence[str]) -> None:
        """Loads on ``devices`` are now copies in a model's entry (or given up): their claims count by copies."""
        with self._lock:
            self._loading.subtract(devices)
            for dev in [d for d, n in self._loading.items() if n <= 0]:
                del self._loading[dev]

    def _unload_copies(self, name: str, copies: Sequence[Copy], drain: bool = True) -> None:
        with self._lock:
            nodes = dict(self._nodes)
        refs = [nodes[c.node].agent.unload.remote(name, c.local, drain) for c in copies if c.node in nodes]
        for ref in refs:
            try:
                self._ray.get(ref, timeout=self.call_timeout_s)
            except Exception as exc:  # a node that is gone has unloaded it already
                log.info("unload of %r on a node failed: %s", name, exc)

    def release(self, holder: str, name: str, drain: bool = True) -> bool:
        """``holder`` no longer needs ``name``; the last holder's release unloads it. True if unloaded."""
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return False
            entry.holders.discard(holder)
            if entry.holders:
                self._bump()
                return False
            del self._models[name]
            entry.closed = True
        self._unload_copies(name, entry.copies, drain)
        self._release_unused_claims()
        self._event("unloaded", model=name)
        return True

    def release_all(self, holder: str) -> list[str]:
        with self._lock:
            names = [n for n, e in self._models.items() if holder in e.holders]
        return [n for n in names if self.release(holder, n)]

    def status(self) -> dict[str, Any]:
        """Every node's engine status (its memory ledger) with cluster ids, plus models, claims and events."""
        with self._lock:
            nodes = list(self._nodes.values())
            models = {n: e.to_json() for n, e in sorted(self._models.items())}
            claims = sorted(self._claims)
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
            "models": models,
            "nodes": [n.to_json() for n in nodes],
            "node_status": per_node,
            "claims": claims,
            "skipped_nodes": dict(self._skipped),
            "events": list(self.events)[-32:],
            "version": self._version,
        }

    def ping(self) -> int:
        return self._version
