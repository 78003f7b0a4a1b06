"""The handle a deployed model is served through: ``infer``, ``infer_async``, ``state``, ``stats``."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from time import perf_counter
from typing import TYPE_CHECKING, Any

from aivmm.errors import ModelNotReadyError
from aivmm.models import ModelSpec
from aivmm.runtime._batching import BatchingConfig
from aivmm.runtime._replica import Replica
from aivmm.runtime._request import RequestOptions, notify_observers
from aivmm.runtime._states import ModelState

if TYPE_CHECKING:
    from aivmm.runtime._dispatch import Dispatcher


class ModelHandle:
    """One deployed model. Thread-safe; ``infer`` may be called from any number of threads.

    Made by ``Engine.add``; requests that cannot run in the caller's thread go through the engine's
    :class:`~aivmm.runtime._dispatch.Dispatcher` (its public methods only).
    """

    def __init__(
        self, dispatcher: Dispatcher, name: str, spec: ModelSpec, *, batching: BatchingConfig | None, isolation: bool
    ) -> None:
        self._dispatcher = dispatcher
        self.name = name
        self.spec = spec
        self.batching = batching
        self.isolation = isolation
        self.state = ModelState.LOADING
        self.replicas: list[Replica] = []
        self.stage_replicas: list[Replica] = []  # the stages of a split model (each on its device)
        self.split_plan: Any = None
        self.events: list[str] = []  # re-placements and other changes, as sentences
        self.lock = threading.Lock()
        self.rejected = 0
        self._fast: Replica | None = None

    @property
    def fast_replica(self) -> Replica | None:
        """The replica whose session runs requests in the caller's thread (no queue, no batching),
        or None when the dispatcher chooses among replicas or batches them."""
        return self._fast

    def refresh_fast_path(self) -> None:
        """The caller-thread path applies when there is nothing to schedule: no batching, one replica."""
        with self.lock:
            healthy = [r for r in self.replicas if r.healthy]
            self._fast = (
                healthy[0] if self.state is ModelState.READY and self.batching is None and len(healthy) == 1 else None
            )

    def infer(
        self,
        feeds: Mapping[str, Any],
        *,
        priority: int = 0,
        deadline_ms: float | None = None,
        reject_late: bool = False,
        output: str = "numpy",
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """Run one request (feeds already validated) and return its outputs in model order.

        ``priority`` orders queued requests (higher first); ``deadline_ms`` orders them earliest
        deadline first and, with ``reject_late``, fails a request with DeadlineExceededError as soon
        as it can no longer finish in time. ``idempotent`` requests are retried once after a device
        or worker failure.
        """
        replica = self._fast
        if replica is not None and deadline_ms is None and idempotent:
            # Fast path: the session runs right here, in the caller's thread, with no lock: announce
            # the request in ``running``, then check the session is still published (an eviction
            # unpublishes before it looks at ``running``; see ResidencyManager.evict).
            session = replica.session
            if session is not None:
                running = replica.running
                running.append(1)
                if replica.session is session:
                    replica.requests += 1  # a lost increment under a race only blurs the rate estimate
                    timed = replica.requests & 7 == 1  # the first and every eighth feed the latency estimate
                    observers = self._dispatcher.request_observers  # metrics time every request
                    start = perf_counter() if timed or observers else 0.0
                    try:
                        out = session.run(feeds, output=output)
                    except BaseException as exc:
                        running.pop()
                        return self._dispatcher.recover(self, replica, feeds, exc, output=output, idempotent=idempotent)
                    running.pop()
                    if timed:
                        end = perf_counter()
                        latency = replica.latency
                        latency[1] = 0.8 * latency.get(1, end - start) + 0.2 * (end - start)
                        replica.last_used = end
                    if observers:
                        notify_observers(observers, self.name, 0.0, perf_counter() - start)
                    if replica.failures:
                        replica.failures = 0
                    return out
                running.pop()
        return self._dispatcher.infer(
            self, feeds, RequestOptions(priority, deadline_ms, reject_late, output, idempotent)
        )

    async def infer_async(
        self,
        feeds: Mapping[str, Any],
        *,
        priority: int = 0,
        deadline_ms: float | None = None,
        reject_late: bool = False,
        output: str = "numpy",
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """``infer`` for asyncio: queued models await their future; others run in a worker thread."""
        options = RequestOptions(priority, deadline_ms, reject_late, output, idempotent)
        if self.batching is None:
            return await asyncio.to_thread(functools.partial(self.infer, feeds, **vars(options)))
        return await asyncio.wrap_future(self._dispatcher.enqueue(self, feeds, options))

    def submit(self, feeds: Mapping[str, Any], **options: Any) -> Future[dict[str, Any]]:
        """Queue one request on a model deployed with batching and return at once; the future holds
        its outputs or its error. ``options`` are ``infer``'s (see RequestOptions); a model without
        batching has no queue (ConfigError)."""
        return self._dispatcher.enqueue(self, feeds, RequestOptions(**options))

    def add_replica(self, replica: Replica) -> None:
        """Serve from ``replica`` too (the loader calls this once it is registered)."""
        with self.lock:
            self.replicas.append(replica)

    def drop_replicas_on(self, device_id: str) -> list[Replica]:
        """Stop serving from the replicas on ``device_id`` (it failed); returns them, marked unhealthy."""
        with self.lock:
            lost = [r for r in self.replicas if r.device.id == device_id]
            for r in lost:
                r.healthy = False
            self.replicas = [r for r in self.replicas if r.healthy]
        if lost:
            self.refresh_fast_path()
        return lost

    def start_draining(self) -> bool:
        """Take no new requests from now on; False when it was already draining or unloaded."""
        with self.lock:
            if self.state in (ModelState.DRAINING, ModelState.UNLOADED):
                return False
            self.state = ModelState.DRAINING
        self.refresh_fast_path()
        return True

    def outstanding(self) -> bool:
        """Whether any accepted request is still running or queued."""
        return any(r.inflight or (r.queue is not None and r.queue.outstanding()) for r in self.replicas)

    def check_ready(self) -> None:
        """Raise ModelNotReadyError saying why unless the model is READY."""
        state = self.state
        if state is ModelState.READY:
            return
        if state is ModelState.LOADING:
            raise ModelNotReadyError(f"model {self.name!r} is still loading")
        if state is ModelState.DRAINING:
            raise ModelNotReadyError(f"model {self.name!r} is being unloaded (draining); it takes no new requests")
        if state is ModelState.FAILED:
            raise ModelNotReadyError(f"model {self.name!r} failed: {'; '.join(self.events[-1:])}")
        raise ModelNotReadyError(f"model {self.name!r} was unloaded")

    def queue_length(self) -> int:
        """Requests waiting in its replicas' queues."""
        return sum(len(r.queue) for r in self.replicas if r.queue is not None)

    def stats(self) -> dict[str, Any]:
        """State, batching, queue, request counts, loads and evictions, per replica and stage, as JSON."""
        replicas = [_replica_stats(r) for r in self.replicas]
        batches = sum(r.batches for r in self.replicas)
        items = sum(r.batched_items for r in self.replicas)
        return {
            "state": self.state.value,
            "batching": None if self.batching is None else self.batching.to_json(),
            "isolation": self.isolation,
            "queue_length": self.queue_length(),
            "requests": sum(r.requests for r in self.replicas),
            "rejected": self.rejected,
            "batches": {"count": batches, "mean_size": round(items / batches, 3) if batches else 0.0},
            "loads": sum(r.load_count for r in (*self.replicas, *self.stage_replicas)),
            "evictions": sum(r.eviction_count for r in (*self.replicas, *self.stage_replicas)),
            "replicas": replicas,
            "stages": [_replica_stats(r) for r in self.stage_replicas],
            "split": None if self.split_plan is None else self.split_plan.to_json(),
            "events": list(self.events),
        }

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r}, state={self.state.value}, replicas={len(self.replicas)})"


def _replica_stats(r: Replica) -> dict[str, Any]:
    return {
        "key": r.key,
        "device": r.device.id,
        "config": r.config.label(),
        "tier": r.tier.value,
        "healthy": r.healthy,
        "charged_bytes": r.charged_bytes,
        "footprint": r.footprint.to_json(),
        "inflight": r.inflight,
        "queue_length": 0 if r.queue is None else len(r.queue),
        "requests": r.requests,
        "batches": r.batches,
        "mean_batch": round(r.batched_items / r.batches, 3) if r.batches else 0.0,
        "expected_latency_ms": round(r.expected_latency(1) * 1e3, 4),
        "rate_per_s": round(r.request_rate(), 4),
        "loads": [m.to_json() for m in r.loads],
        "evictions": [m.to_json() for m in r.evictions],
    }
