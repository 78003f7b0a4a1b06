"""The engine: deployed models sharing devices.

``Engine.add`` admits a model through the memory ledger and loads its replicas (or its pipeline
stages); ``ModelHandle.infer`` serves requests - in the caller's thread when there is nothing to
schedule, otherwise through the device executor's queues with dynamic batching, priorities and
deadlines. Devices are overcommitted: a model that does not fit evicts idle ones chosen by the
cost-benefit policy and the evicted ones come back on their next request.
"""

from __future__ import annotations

import functools
import logging
import math
import pathlib
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.backends import registry
from aivmm.backends._base import Config, Session
from aivmm.devices._types import Device
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeadlineExceededError,
    DeviceError,
    DeviceNotFoundError,
    DeviceUnhealthyError,
    ExecutionError,
    ModelClosedError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelTooLargeError,
    OutOfMemoryError,
)
from aivmm.memory._budget import resolve_capacities
from aivmm.memory._footprint import Footprint, estimate, format_bytes
from aivmm.memory._ledger import Ledger
from aivmm.memory._policy import EvictionPolicy
from aivmm.models._spec import ModelSpec
from aivmm.runtime._batching import BatchingConfig, compat_key, items_in, merge, split
from aivmm.runtime._executor import DeviceExecutor
from aivmm.runtime._handle import ModelHandle
from aivmm.runtime._replica import Replica, _NotResident
from aivmm.runtime._request import ReplicaQueue, Request, notify_observers, settle
from aivmm.runtime._residency import ResidencyManager, is_out_of_memory
from aivmm.runtime._split import PipelineSession, SplitPlan, build_stages, plan_split
from aivmm.runtime._states import ModelState, Tier
from aivmm.runtime._worker import WorkerSession

log = logging.getLogger(__name__)

Placement = tuple[Config, Device]
Replanner = Callable[[ModelSpec, Sequence[Device], Config], Sequence[Placement]]

_DEFAULT_QUEUE = 1024
_RACE_RETRIES = 8  # a replica evicted between choosing and running it is reloaded at most this often



class Engine:
    """Many models on many devices.

    ``budgets`` maps a device id to a byte budget (``"512MiB"`` or an int); devices without one get
    their measured free memory minus ``reserve_fraction``. ``AIVMM_MEMORY_BUDGET`` sets budgets too
    (the argument wins). ``policy`` chooses eviction victims (cost-benefit by default);
    ``failure_threshold`` consecutive device errors take a device out of service; ``replan`` picks
    new placements for a model whose device failed (by default: the same backend, or the device's
    first runtime, on the healthy device with the most free budget).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        budgets: Mapping[str, int | str] | None = None,
        reserve_fraction: float = 0.1,
        policy: EvictionPolicy | None = None,
        workers_per_device: int = 1,
        failure_threshold: int = 3,
        replan: Replanner | None = None,
        work_dir: str | pathlib.Path | None = None,
    ) -> None:
        devices = list(devices)
        if not devices:
            raise ConfigError("Engine needs at least one device")
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"duplicate device ids: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
        if isinstance(workers_per_device, bool) or not isinstance(workers_per_device, int) or workers_per_device < 1:
            raise ConfigError(f"workers_per_device must be an int >= 1, got {workers_per_device!r}")
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        self._devices = {d.id: d for d in devices}
        self._unhealthy: dict[str, str] = {}
        self.ledger = Ledger(resolve_capacities(devices, budgets, reserve_fraction=reserve_fraction))
        self.residency = ResidencyManager(self.ledger, self._open_session, policy=policy,
                                          on_resident=self._on_resident)
        self._workers = workers_per_device
        self._failure_threshold = failure_threshold
        self._replan = replan
        self._work_dir = pathlib.Path(work_dir) if work_dir is not None else None
        self._executors: dict[str, DeviceExecutor] = {}
        self._models: dict[str, ModelHandle] = {}
        self._lock = threading.RLock()
        self._closed = False
        # Called as fn(model name, queue seconds, compute seconds) for every finished request.
        self.request_observers: list[Callable[[str, float, float], None]] = []

    # ------------------------------------------------------------------ lifecycle
    def add(
        self,
        name: str,
        spec: ModelSpec,
        placements: Sequence[Placement],
        *,
        batching: BatchingConfig | None = None,
        isolation: bool = False,
        split: bool | str = "auto",
    ) -> ModelHandle:
        """Deploy ``spec`` as ``name``: several placements are replicas; a model too large for its
        device is split into pipeline stages across devices (``split="auto"``), or over the given
        placements' devices in order (``split=True``)."""
        self._check_open()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"model name must be a non-empty string, got {name!r}")
        if split not in (True, False, "auto"):
            raise ConfigError(f"split must be True, False or 'auto', got {split!r}")
        if batching is not None and not isinstance(batching, BatchingConfig):
            raise ConfigError(f"batching must be a BatchingConfig, got {type(batching).__name__}")
        placements = list(placements)
        if not placements:
            raise ConfigError(f"model {name!r}: at least one (config, device) placement is needed")
        for config, device in placements:
            self._check_placement(name, config, device)
        if batching is not None:
            self._check_batchable(spec, batching)
        batch = batching.max_batch_size if batching is not None else 1
        with self._lock:
            if name in self._models:
                raise ConfigError(f"a model named {name!r} is already deployed; remove it first or pick another name")
            handle = ModelHandle(self, name, spec, batching=batching, isolation=isolation)
            self._models[name] = handle
        try:
            footprints = [estimate(spec, cfg.precision, batch) for cfg, _ in placements]
            too_big = [
                (cfg, dev, fp) for (cfg, dev), fp in zip(placements, footprints)
                if fp.total > self.ledger.capacity(dev.id)
            ]
            if split is True or (split == "auto" and too_big and len(placements) == 1):
                self._add_split(handle, placements, footprints[0], forced=split is True)
            else:
                if too_big:
                    raise self._too_large(spec, too_big, batch)
                for i, ((cfg, dev), fp) in enumerate(zip(placements, footprints)):
                    self._add_replica(handle, i, spec, cfg, dev, fp, isolation=isolation)
                for replica in handle.replicas:
                    try:
                        self.residency.ensure_resident(replica, "deploy")
                    except OutOfMemoryError as exc:
                        # Overcommitted and everything else busy: it loads on its first request.
                        handle.events.append(f"{replica.key} not loaded at deploy: {exc}")
        except BaseException:
            self._discard(handle)
            raise
        handle.state = ModelState.READY
        handle.refresh_fast_path()
        return handle

    def _check_placement(self, name: str, config: Config, device: Device) -> None:
        if not isinstance(config, Config) or not isinstance(device, Device):
            raise ConfigError(f"model {name!r}: placements are (Config, Device) pairs, got {(config, device)!r}")
        if device.id not in self._devices:
            raise DeviceNotFoundError(f"model {name!r}: device {device.id} is not one of {sorted(self._devices)}")
        if device.id in self._unhealthy:
            raise DeviceUnhealthyError(f"device {device.id} is out of service: {self._unhealthy[device.id]}")
        if config.device != device.id:
            raise ConfigError(f"model {name!r}: config {config.label()} names {config.device}, paired with {device.id}")

    @staticmethod
    def _check_batchable(spec: ModelSpec, batching: BatchingConfig) -> None:
        bd = spec.batch_dim
        if bd is None:
            raise ConfigError(f"model {spec.name!r} has no batch dimension; deploy it without batching")
        for t in spec.inputs:
            if len(t.shape) <= bd:
                raise ConfigError(f"input {t.describe()} has no dimension {bd} to batch along")
            dim = t.shape[bd]
            if isinstance(dim, int) and dim >= 0 and batching.max_batch_size > 1 and dim != batching.max_batch_size:
                raise ConfigError(
                    f"input {t.describe()} has a fixed batch size {dim}; batching up to"
                    f" {batching.max_batch_size} needs a dynamic batch dimension"
                )

    def _too_large(self, spec: ModelSpec, too_big: list[tuple[Config, Device, Footprint]], batch: int
                   ) -> ModelTooLargeError:
        parts = [
            f"{dev.id}: needs {format_bytes(fp.total)} (weights {format_bytes(fp.weights_bytes)} at"
            f" {cfg.precision.value} + activations {format_bytes(fp.activation_bytes)} at batch {batch}),"
            f" budget {format_bytes(self.ledger.capacity(dev.id))}"
            for cfg, dev, fp in too_big
        ]
        largest = max(self.ledger.capacity(d) for d in self._healthy_ids())
        return ModelTooLargeError(
            f"model {spec.name!r} does not fit: {'; '.join(parts)}; the largest budget is {format_bytes(largest)}"
            " (deploy it with one placement and split='auto' to split it across devices)"
        )

    def _add_replica(self, handle: ModelHandle, index: int, spec: ModelSpec, config: Config, device: Device,
                     footprint: Footprint, *, isolation: bool) -> Replica:
        replica = Replica(handle.name, index, spec, config, device, footprint, isolation=isolation)
        if handle.batching is not None:
            replica.queue = ReplicaQueue(
                replica.key, functools.partial(self._run_batch, handle, replica),
                batching=handle.batching, batch_dim=spec.batch_dim, limit=handle.batching.max_queue_size,
                runnable=replica.resident, latency=replica.expected_latency,
                stalled=functools.partial(self._prefetch, replica),
            )
            self._executor(device.id).register(replica.queue)
        self.residency.register(replica)
        with handle.lock:
            handle.replicas.append(replica)
        return replica

    def _add_split(self, handle: ModelHandle, placements: list[Placement], footprint: Footprint, *,
                   forced: bool) -> None:
        spec = handle.spec
        config, first = placements[0]
        if forced and len(placements) > 1:
            devices = [d for _, d in placements]
        else:
            others = sorted((self._devices[i] for i in self._healthy_ids() if i != first.id),
                            key=lambda d: -self.ledger.capacity(d.id))
            devices = [first, *others]
        share = footprint.activation_bytes // max(1, len(devices))
        rooms = [(d.id, max(0, self.ledger.capacity(d.id) - share)) for d in devices]
        plan: SplitPlan = plan_split(spec, rooms)
        work = self._work_dir or pathlib.Path(tempfile.mkdtemp(prefix="aivmm-split-"))
        stage_specs = build_stages(spec, plan, work / handle.name.replace("/", "_"))
        handle.split_plan = plan
        sessions: list[Session] = []
        for stage, stage_spec in zip(plan.stages, stage_specs):
            dev = self._devices[stage.device]
            cfg = placements[stage.index][0] if forced and len(placements) > 1 else self._config_for(dev, config)
            fp = estimate(stage_spec, cfg.precision, handle.batching.max_batch_size if handle.batching else 1)
            replica = Replica(f"{handle.name}/stage{stage.index}", 0, stage_spec, cfg, dev, fp,
                              isolation=handle.isolation)
            replica.pinned = True
            self.residency.register(replica)
            handle.stage_replicas.append(replica)
            self.residency.ensure_resident(replica, "deploy (pipeline stage)")
            assert replica.session is not None
            sessions.append(replica.session)
        pipeline = Replica(handle.name, 0, spec, config, first, Footprint(0, 0))
        pipeline.pinned = True
        pipeline.session = PipelineSession(spec, first, config, sessions)
        pipeline.tier = Tier.DEVICE
        if handle.batching is not None:
            pipeline.queue = ReplicaQueue(
                pipeline.key, functools.partial(self._run_batch, handle, pipeline),
                batching=handle.batching, batch_dim=spec.batch_dim, limit=handle.batching.max_queue_size,
                runnable=pipeline.resident, latency=pipeline.expected_latency,
            )
            self._executor(first.id).register(pipeline.queue)
        with handle.lock:
            handle.replicas.append(pipeline)
        handle.events.append(
            f"split into {len(plan.stages)} stages on {', '.join(s.device for s in plan.stages)}:"
            f" {format_bytes(footprint.total)} does not fit {first.id}'s budget of"
            f" {format_bytes(self.ledger.capacity(first.id))}"
            if not forced else f"split into {len(plan.stages)} stages as asked"
        )

    def remove(self, name: str, *, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Unload a model. With ``drain`` the requests already accepted finish first; requests that
        arrive from now on fail with ModelNotReadyError (then ModelNotFoundError once it is gone)."""
        handle = self.get(name)
        with handle.lock:
            if handle.state in (ModelState.DRAINING, ModelState.UNLOADED):
                return
            handle.state = ModelState.DRAINING
        handle.refresh_fast_path()
        deadline = time.monotonic() + timeout_s
        if drain:
            while time.monotonic() < deadline and any(
                r.inflight or (r.queue is not None and r.queue.outstanding()) for r in handle.replicas
            ):
                time.sleep(0.002)
        self._discard(handle, timeout_s=max(0.0, deadline - time.monotonic()))

    def _discard(self, handle: ModelHandle, *, timeout_s: float = 5.0) -> None:
        for replica in handle.replicas:
            if replica.queue is not None:
                for left in self._executor(replica.device.id).unregister(replica.queue):
                    settle(left, error=ModelNotReadyError(f"model {handle.name!r} was unloaded before it ran"))
        for replica in [*handle.replicas, *handle.stage_replicas]:
            try:
                self.residency.unload(replica, timeout_s=timeout_s)
            except Exception:  # a broken session must not keep the memory accounted
                log.exception("closing %s failed", replica.key)
                self.ledger.release(replica.key)
        handle.state = ModelState.UNLOADED
        handle.refresh_fast_path()
        with self._lock:
            if self._models.get(handle.name) is handle:
                del self._models[handle.name]

    def get(self, name: str) -> ModelHandle:
        with self._lock:
            handle = self._models.get(name)
        if handle is None:
            raise ModelNotFoundError(f"no model named {name!r}; deployed: {sorted(self._models)}")
        return handle

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def infer(self, name: str, feeds: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.get(name).infer(feeds, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = list(self._models.values())
        for handle in handles:
            handle.state = ModelState.DRAINING
            handle.refresh_fast_path()
            self._discard(handle)
        for ex in self._executors.values():
            ex.close()
        self.residency.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the engine is closed")

    # ------------------------------------------------------------------ sessions
    def _open_session(self, replica: Replica) -> Session:
        if replica.isolation:
            return WorkerSession(replica.spec, replica.device, replica.config)
        return registry.get(replica.config.backend).load(replica.spec, replica.device, replica.config)

    def _on_resident(self, replica: Replica) -> None:
        ex = self._executors.get(replica.device.id)
        if ex is not None:
            ex.wake()

    def _executor(self, device_id: str) -> DeviceExecutor:
        with self._lock:
            ex = self._executors.get(device_id)
            if ex is None:
                ex = self._executors[device_id] = DeviceExecutor(device_id, self._workers)
            return ex

    def _config_for(self, device: Device, like: Config) -> Config:
        """The same backend when it drives ``device``, else the device's first runtime that does."""
        names = [like.backend, *device.runtimes] + (["simulated"] if device.simulated else [])
        for backend_name in names:
            try:
                backend = registry.get(backend_name)
            except AivmmError:
                continue
            if backend.drives(device):
                return Config(backend_name, device.id, like.precision, dict(like.options))
        raise DeviceUnhealthyError(f"no installed backend drives {device.id} (tried {names})")

    def _healthy_ids(self) -> list[str]:
        return [d for d in self._devices if d not in self._unhealthy]

    # ------------------------------------------------------------------ serving
    def _choose(self, handle: ModelHandle, items: int, exclude: Replica | None = None) -> Replica:
        best: Replica | None = None
        best_cost = math.inf
        for r in handle.replicas:
            if not r.healthy:
                continue
            outstanding = r.inflight + (r.queue.outstanding() if r.queue is not None else 0)
            # An unmeasured replica costs nothing, so it gets tried and measured.
            cost = (outstanding + items) * r.expected_latency(1) + (math.inf if r is exclude else 0.0)
            if r.tier is not Tier.DEVICE:
                cost += r.reload_seconds(self.residency.bandwidth(r.device.id))
            if best is None or cost < best_cost:
                best, best_cost = r, cost
        if best is None:
            raise ModelNotReadyError(f"model {handle.name!r} has no healthy replica: {'; '.join(handle.events[-2:])}")
        return best

    def _infer(self, handle: ModelHandle, feeds: Mapping[str, Any], *, priority: int, deadline_ms: float | None,
               reject_late: bool, output: str, idempotent: bool) -> dict[str, Any]:
        if handle.batching is not None:
            return self._enqueue(handle, feeds, priority=priority, deadline_ms=deadline_ms, reject_late=reject_late,
                                 output=output, idempotent=idempotent).future.result()
        handle.check_ready()
        deadline = _deadline(deadline_ms)
        last: BaseException | None = None
        for _ in range(_RACE_RETRIES):
            replica = self._choose(handle, 1)
            if reject_late and deadline is not None:
                expected = replica.expected_latency(1)
                if replica.tier is not Tier.DEVICE:
                    expected += replica.reload_seconds(self.residency.bandwidth(replica.device.id))
                if time.monotonic() + expected > deadline:
                    handle.rejected += 1
                    raise DeadlineExceededError(
                        f"model {handle.name!r}: expected {expected * 1e3:.1f} ms but only"
                        f" {max(0.0, deadline - time.monotonic()) * 1e3:.1f} ms remain; rejected before running"
                    )
            self.residency.ensure_resident(replica)
            try:
                session = replica.acquire()
            except _NotResident as exc:  # evicted between the load and here: load again
                last = exc
                continue
            start = time.perf_counter()
            try:
                out = _run(session, feeds, output, idempotent)
            except BaseException as exc:
                replica.release()
                return self._recover(handle, replica, feeds, exc, output=output, idempotent=idempotent)
            replica.release()
            replica.observe_latency(1, time.perf_counter() - start)
            replica.failures = 0
            return out
        raise OutOfMemoryError(f"model {handle.name!r} was evicted {_RACE_RETRIES} times before it could run: {last}")

    def _recover(self, handle: ModelHandle, replica: Replica, feeds: Mapping[str, Any], exc: BaseException, *,
                 output: str, idempotent: bool, attempt: int = 0) -> dict[str, Any]:
        """After a failed run: OOM -> evict and retry once; device error -> count, maybe take the device
        out of service and re-place, retry once when idempotent; anything else -> raise it."""
        if not self._retryable(replica, exc) or attempt > 0:
            raise _wrap(exc, replica)
        if not idempotent:
            raise _wrap(exc, replica)
        handle.check_ready()
        target = self._choose(handle, 1, exclude=replica)  # another replica when there is one
        self.residency.ensure_resident(target, "retry after failure")
        try:
            session = target.acquire()
        except _NotResident:
            raise _wrap(exc, replica) from None
        try:
            out = session.run(feeds, output=output)
        except BaseException as exc2:
            target.release()
            self._retryable(target, exc2)  # count the failure
            raise _wrap(exc2, target) from exc
        target.release()
        return out

    def _retryable(self, replica: Replica, exc: BaseException) -> bool:
        if is_out_of_memory(exc):
            self.residency.make_room(replica.device.id, replica.charged_bytes, exclude=replica,
                                     reason=f"out of memory running {replica.key}")
            return True
        if isinstance(exc, DeviceError) and not isinstance(exc, DeviceNotFoundError):
            replica.failures += 1
            if replica.failures >= self._failure_threshold:
                self.mark_unhealthy(replica.device.id, f"{replica.failures} consecutive errors; last: {exc}")
            return True
        return False

    def _enqueue(self, handle: ModelHandle, feeds: Mapping[str, Any], *, priority: int, deadline_ms: float | None,
                 reject_late: bool, output: str, idempotent: bool) -> Request:
        handle.check_ready()
        assert handle.batching is not None
        bd = handle.spec.batch_dim
        feeds = dict(feeds)
        compat = compat_key(feeds, bd) if bd is not None else None
        request = Request(
            feeds, priority=int(priority), deadline=_deadline(deadline_ms), reject_late=reject_late, output=output,
            idempotent=idempotent, items=items_in(feeds, bd) if compat is not None and bd is not None else 1,
            compat=None if compat is None else (output, compat),
        )
        self._submit(handle, request)
        return request

    def _submit(self, handle: ModelHandle, request: Request, exclude: Replica | None = None) -> None:
        replica = self._choose(handle, request.items, exclude)
        assert replica.queue is not None
        if request.reject_late and request.deadline is not None:
            expected = self._expected_wait(replica, request.items)
            remaining = request.deadline - time.monotonic()
            if expected > remaining:
                handle.rejected += 1
                raise DeadlineExceededError(
                    f"model {handle.name!r}: {replica.queue.outstanding()} items ahead, expected to finish in"
                    f" {expected * 1e3:.1f} ms but the deadline is in {max(0.0, remaining) * 1e3:.1f} ms;"
                    " rejected before queueing"
                )
        self._executor(replica.device.id).submit(replica.queue, request)
        if replica.tier is not Tier.DEVICE:
            self._prefetch(replica)

    def _prefetch(self, replica: Replica) -> None:
        fut = self.residency.prefetch(replica)
        if not getattr(fut, "aivmm_watched", False):
            fut.aivmm_watched = True  # type: ignore[attr-defined]  # one failure handler per load
            fut.add_done_callback(functools.partial(self._prefetch_done, replica))

    def _expected_wait(self, replica: Replica, items: int) -> float:
        """Seconds until a request just queued on ``replica`` would finish (0 before anything was measured)."""
        assert replica.queue is not None
        cfg = replica.queue.batching
        ahead = replica.queue.outstanding() + items
        size = min(ahead, cfg.max_batch_size) if cfg is not None else 1
        seconds = math.ceil(ahead / max(1, size)) * replica.expected_latency(size)
        if replica.tier is not Tier.DEVICE:
            seconds += replica.reload_seconds(self.residency.bandwidth(replica.device.id))
        return seconds

    def _prefetch_done(self, replica: Replica, fut: Any) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is None or replica.queue is None:
            return
        # The queued requests cannot run without their model: fail them with the reason.
        ex = self._executors.get(replica.device.id)
        if ex is None:
            return
        with ex.cond:
            while len(replica.queue):
                settle(replica.queue.pop(), error=exc)

    def _run_batch(self, handle: ModelHandle, replica: Replica, requests: list[Request]) -> None:
        live = [r for r in requests if r.future.running() or r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self.residency.ensure_resident(replica, "queued request")
            session = replica.acquire()
        except _NotResident:
            self._resubmit(handle, live, None)
            return
        except BaseException as exc:
            for r in live:
                settle(r, error=exc)
            return
        cfg = handle.batching
        bd = handle.spec.batch_dim
        sizes = [r.items for r in live]
        padded = cfg.padded_size(sum(sizes)) if cfg is not None else sum(sizes)
        start = time.perf_counter()
        try:
            idempotent = all(r.idempotent for r in live)
            if live[0].compat is None or bd is None:
                results = [_run(session, live[0].feeds, live[0].output, idempotent)]
            else:
                merged = merge([r.feeds for r in live], bd, padded)
                out = _run(session, merged, live[0].output, idempotent)
                results = split(out, sizes, bd, handle.name, padded)
        except BaseException as exc:
            replica.release()
            self._batch_failed(handle, replica, live, exc)
            return
        replica.release()
        elapsed = time.perf_counter() - start
        if self.request_observers:
            started = time.monotonic() - elapsed
            for r in live:
                notify_observers(self.request_observers, handle.name, max(0.0, started - r.arrival), elapsed)
        replica.observe_latency(padded, elapsed)
        replica.failures = 0
        with replica.lock:
            replica.batches += 1
            replica.batched_items += sum(sizes)
            replica.requests += len(live) - 1  # acquire() counted one
        for r, out in zip(live, results):
            settle(r, out)

    def _batch_failed(self, handle: ModelHandle, replica: Replica, live: list[Request], exc: BaseException) -> None:
        if self._retryable(replica, exc):
            self._resubmit(handle, live, exc, exclude=replica)
            return
        if len(live) > 1:
            # One bad request must not fail its batch-mates: run each alone to find out whose it was.
            for r in live:
                self._run_batch(handle, replica, [r])
            return
        settle(live[0], error=_wrap(exc, replica))

    def _resubmit(self, handle: ModelHandle, live: list[Request], exc: BaseException | None,
                  exclude: Replica | None = None) -> None:
        for r in live:
            if exc is not None and (r.attempts >= 1 or not r.idempotent):
                settle(r, error=_wrap(exc, None))
                continue
            r.attempts += 1 if exc is not None else 0
            try:
                handle.check_ready()
                self._submit(handle, r, exclude)
            except BaseException as err:
                settle(r, error=err)

    # ------------------------------------------------------------------ devices
    def mark_unhealthy(self, device_id: str, reason: str) -> None:
        """Take a device out of service and re-place the models that lived on it."""
        with self._lock:
            if device_id in self._unhealthy or device_id not in self._devices:
                return
            self._unhealthy[device_id] = reason
            handles = list(self._models.values())
        log.warning("device %s taken out of service: %s", device_id, reason)
        self.ledger.set_capacity(device_id, 0)
        for handle in handles:
            lost = [r for r in handle.replicas if r.device.id == device_id]
            if not lost:
                continue
            for r in lost:
                r.healthy = False
            with handle.lock:
                handle.replicas = [r for r in handle.replicas if r.healthy]
            handle.refresh_fast_path()
            if not handle.replicas:
                self._replace(handle, lost[0])
            for r in lost:
                waiting = self._executor(device_id).unregister(r.queue) if r.queue is not None else []
                threading.Thread(target=self._retire, args=(r,), daemon=True).start()
                for req in waiting:
                    try:
                        self._submit(handle, req)
                    except BaseException as err:
                        settle(req, error=err)

    def _retire(self, replica: Replica) -> None:
        try:
            self.residency.unload(replica, timeout_s=5.0)
        except Exception:
            log.exception("closing %s on a failed device", replica.key)
            self.ledger.release(replica.key)

    def _replace(self, handle: ModelHandle, old: Replica) -> None:
        healthy = [self._devices[i] for i in self._healthy_ids()]
        try:
            if self._replan is not None:
                placements = list(self._replan(handle.spec, healthy, old.config))
            else:
                ranked = sorted(healthy, key=lambda d: -self.ledger.free(d.id))
                placements = []
                for dev in ranked:
                    try:
                        placements = [(self._config_for(dev, old.config), dev)]
                        break
                    except DeviceUnhealthyError:
                        continue
            if not placements:
                raise DeviceUnhealthyError("no healthy device can run it")
            batch = handle.batching.max_batch_size if handle.batching else 1
            base = max((r.index for r in [old, *handle.replicas]), default=0) + 1
            for i, (cfg, dev) in enumerate(placements):
                fp = estimate(handle.spec, cfg.precision, batch)
                self._add_replica(handle, base + i, handle.spec, cfg, dev, fp, isolation=handle.isolation)
            handle.events.append(
                f"re-placed from {old.device.id} (unhealthy) to {', '.join(c.label() for c, _ in placements)}"
            )
            handle.refresh_fast_path()
        except AivmmError as exc:
            handle.events.append(f"could not re-place after {old.device.id} failed: {exc}")
            handle.state = ModelState.FAILED
            handle.refresh_fast_path()

    # ------------------------------------------------------------------ introspection
    def status(self) -> dict[str, Any]:
        """Per device: budget, used bytes, resident models; per model: state, residency, queue,
        batches, loads and evictions with durations."""
        snap = self.ledger.snapshot()
        with self._lock:
            handles = dict(self._models)
        devices: dict[str, Any] = {}
        for dev_id, figures in snap.items():
            entries = self.ledger.entries(dev_id)
            devices[dev_id] = {
                "budget_bytes": figures["capacity_bytes"],
                "used_bytes": figures["used_bytes"],
                "peak_bytes": figures["peak_bytes"],
                "free_bytes": figures["capacity_bytes"] - figures["used_bytes"],
                "healthy": dev_id not in self._unhealthy,
                "unhealthy_reason": self._unhealthy.get(dev_id, ""),
                "resident": sorted(e.key for e in entries),
                "simulated": self._devices[dev_id].simulated,
            }
        return {
            "devices": devices,
            "models": {name: h.stats() for name, h in sorted(handles.items())},
            "policy": self.residency.policy.name,
            "eviction_decisions": [
                {"reason": why, "victims": list(d.victims), "freed_bytes": d.freed_bytes, "why": list(d.reasons)}
                for why, d in list(self.residency.decisions)
            ],
        }


def _run(session: Session, feeds: Mapping[str, Any], output: str, idempotent: bool) -> dict[str, Any]:
    if isinstance(session, WorkerSession):  # only a worker can crash mid-request and be retried
        return session.run_with_retry(feeds, output, idempotent=idempotent)
    return session.run(feeds, output=output)


def _deadline(deadline_ms: float | None) -> float | None:
    if deadline_ms is None:
        return None
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int | float) or not deadline_ms > 0:
        raise ConfigError(f"deadline_ms must be a positive number, got {deadline_ms!r}")
    return time.monotonic() + deadline_ms / 1e3


def _wrap(exc: BaseException, replica: Replica | None) -> BaseException:
    if isinstance(exc, AivmmError) or not isinstance(exc, Exception):
        return exc
    where = f" on {replica.device.id}" if replica is not None else ""
    if is_out_of_memory(exc):
        err: AivmmError = OutOfMemoryError(f"out of memory{where}: {exc}")
    else:
        err = ExecutionError(f"{type(exc).__name__}{where}: {exc}")
    err.__cause__ = exc
    return err
