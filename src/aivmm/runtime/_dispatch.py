"""Dispatch: which replica runs a request, through which queue, in which batch, and what a failure does.

A model without batching runs in the caller's thread (``infer``); a batched one goes through its
replica's queue on the device executor, which orders requests by priority and deadline and merges
compatible ones into batches (``enqueue``). A failed run is retried once when that can help: out of
memory evicts first, a device error counts towards taking the device out of service.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from aivmm.backends import Session
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeadlineExceededError,
    DeviceError,
    DeviceNotFoundError,
    ExecutionError,
    ModelNotReadyError,
    OutOfMemoryError,
)
from aivmm.runtime._batching import compat_key, items_in, merge, split
from aivmm.runtime._executor import DeviceExecutor
from aivmm.runtime._replica import NotResident, Replica
from aivmm.runtime._request import ReplicaQueue, Request, RequestOptions, notify_observers, settle
from aivmm.runtime._residency import ResidencyManager, is_out_of_memory
from aivmm.runtime._states import Tier
from aivmm.runtime._worker import WorkerSession

if TYPE_CHECKING:
    from aivmm.runtime._handle import ModelHandle

RequestObserver = Callable[[str, float, float], None]

_DEFAULT = RequestOptions()
_RACE_RETRIES = 8  # a replica evicted between choosing and running it is reloaded at most this often


class Dispatcher:
    """Queues, batches and retries for every model of one engine.

    ``on_device_failure(device_id, reason)`` is called once a replica's device failed
    ``failure_threshold`` times in a row. ``request_observers`` are called as fn(model name,
    queue seconds, compute seconds) for every finished request.
    """

    def __init__(
        self,
        residency: ResidencyManager,
        *,
        workers_per_device: int,
        failure_threshold: int,
        on_device_failure: Callable[[str, str], None],
    ) -> None:
        self._residency = residency
        self._workers = workers_per_device
        self._failure_threshold = failure_threshold
        self._on_device_failure = on_device_failure
        self._executors: dict[str, DeviceExecutor] = {}
        self._lock = threading.Lock()
        self.request_observers: list[RequestObserver] = []

    # ------------------------------------------------------------------ queues
    def attach(self, handle: ModelHandle, replica: Replica, *, prefetch_when_stalled: bool = True) -> None:
        """Give ``replica`` a queue on its device's executor when ``handle`` batches (else nothing to do)."""
        if handle.batching is None:
            return
        stalled: Callable[[], object] = (
            functools.partial(self._prefetch, replica) if prefetch_when_stalled else lambda: None
        )
        replica.queue = ReplicaQueue(
            replica.key,
            functools.partial(self._run_batch, handle, replica),
            batching=handle.batching,
            batch_dim=handle.spec.batch_dim,
            limit=handle.batching.max_queue_size,
            runnable=replica.resident,
            latency=replica.expected_latency,
            stalled=stalled,
        )
        self._executor(replica.device.id).register(replica.queue)

    def detach(self, replica: Replica) -> list[Request]:
        """Take ``replica``'s queue off its executor; returns the requests that were still waiting."""
        if replica.queue is None:
            return []
        return self._executor(replica.device.id).unregister(replica.queue)

    def wake(self, device_id: str) -> None:
        """A replica on ``device_id`` became resident: its queued requests may run now."""
        with self._lock:
            ex = self._executors.get(device_id)
        if ex is not None:
            ex.wake()

    def close(self) -> None:
        """Stop every device executor's threads (bounded join)."""
        with self._lock:
            executors = list(self._executors.values())
        for ex in executors:
            ex.close()

    # ------------------------------------------------------------------ requests
    def choose(self, handle: ModelHandle, items: int, exclude: Replica | None = None) -> Replica:
        """The healthy replica expected to finish ``items`` more first (``exclude`` only as a last resort)."""
        best: Replica | None = None
        best_cost = math.inf
        for r in handle.replicas:
            if not r.healthy:
                continue
            outstanding = r.inflight + (r.queue.outstanding() if r.queue is not None else 0)
            # An unmeasured replica costs nothing, so it gets tried and measured.
            cost = (outstanding + items) * r.expected_latency(1) + (math.inf if r is exclude else 0.0)
            if r.tier is not Tier.DEVICE:
                cost += r.reload_seconds(self._residency.bandwidth(r.device.id))
            if best is None or cost < best_cost:
                best, best_cost = r, cost
        if best is None:
            raise ModelNotReadyError(f"model {handle.name!r} has no healthy replica: {'; '.join(handle.events[-2:])}")
        return best

    def infer(
        self, handle: ModelHandle, feeds: Mapping[str, Any], options: RequestOptions = _DEFAULT
    ) -> dict[str, Any]:
        """Run one request and wait for it: through the queue when ``handle`` batches, else right here."""
        if handle.batching is not None:
            return self.enqueue(handle, feeds, options).result()
        handle.check_ready()
        deadline = options.deadline()
        last: BaseException | None = None
        for _ in range(_RACE_RETRIES):
            replica = self.choose(handle, 1)
            if options.reject_late and deadline is not None:
                expected = replica.expected_latency(1)
                if replica.tier is not Tier.DEVICE:
                    expected += replica.reload_seconds(self._residency.bandwidth(replica.device.id))
                if time.monotonic() + expected > deadline:
                    handle.rejected += 1
                    raise DeadlineExceededError(
                        f"model {handle.name!r}: expected {expected * 1e3:.1f} ms but only"
                        f" {max(0.0, deadline - time.monotonic()) * 1e3:.1f} ms remain; rejected before running"
                    )
            self._residency.ensure_resident(replica)
            try:
                session = replica.acquire()
            except NotResident as exc:  # evicted between the load and here: load again
                last = exc
                continue
            start = time.perf_counter()
            try:
                out = _run(session, feeds, options.output, options.idempotent)
            except BaseException as exc:
                replica.release()
                return self.recover(handle, replica, feeds, exc, output=options.output, idempotent=options.idempotent)
            replica.release()
            replica.observe_latency(1, time.perf_counter() - start)
            replica.failures = 0
            return out
        raise OutOfMemoryError(f"model {handle.name!r} was evicted {_RACE_RETRIES} times before it could run: {last}")

    def enqueue(
        self, handle: ModelHandle, feeds: Mapping[str, Any], options: RequestOptions = _DEFAULT
    ) -> Future[dict[str, Any]]:
        """Queue one request on a batched model; the future holds its outputs or its error."""
        handle.check_ready()
        if handle.batching is None:
            raise ConfigError(f"model {handle.name!r} is deployed without batching; it has no queue")
        bd = handle.spec.batch_dim
        feeds = dict(feeds)
        compat = compat_key(feeds, bd) if bd is not None else None
        request = Request(
            feeds,
            priority=int(options.priority),
            deadline=options.deadline(),
            reject_late=options.reject_late,
            output=options.output,
            idempotent=options.idempotent,
            items=items_in(feeds, bd) if compat is not None and bd is not None else 1,
            compat=None if compat is None else (options.output, compat),
        )
        self.submit(handle, request)
        return request.future

    def submit(self, handle: ModelHandle, request: Request, exclude: Replica | None = None) -> None:
        """Put ``request`` on the queue of the replica chosen for it (rejecting it first when it would be late)."""
        replica = self.choose(handle, request.items, exclude)
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

    def recover(
        self,
        handle: ModelHandle,
        replica: Replica,
        feeds: Mapping[str, Any],
        exc: BaseException,
        *,
        output: str,
        idempotent: bool,
    ) -> dict[str, Any]:
        """After a failed run: OOM -> evict and retry once; device error -> count, maybe take the device
        out of service and re-place, retry once when idempotent; anything else -> raise it."""
        if not self._retryable(replica, exc) or not idempotent:
            raise _wrap(exc, replica)
        handle.check_ready()
        target = self.choose(handle, 1, exclude=replica)  # another replica when there is one
        self._residency.ensure_resident(target, "retry after failure")
        try:
            session = target.acquire()
        except NotResident:
            raise _wrap(exc, replica) from None
        try:
            out = session.run(feeds, output=output)
        except BaseException as exc2:
            target.release()
            self._retryable(target, exc2)  # count the failure
            raise _wrap(exc2, target) from exc
        target.release()
        return out

    # ------------------------------------------------------------------ inside
    def _executor(self, device_id: str) -> DeviceExecutor:
        with self._lock:
            ex = self._executors.get(device_id)
            if ex is None:
                ex = self._executors[device_id] = DeviceExecutor(device_id, self._workers)
            return ex

    def _retryable(self, replica: Replica, exc: BaseException) -> bool:
        if is_out_of_memory(exc):
            self._residency.make_room(
                replica.device.id, replica.charged_bytes, exclude=replica, reason=f"out of memory running {replica.key}"
            )
            return True
        if isinstance(exc, DeviceError) and not isinstance(exc, DeviceNotFoundError):
            replica.failures += 1
            if replica.failures >= self._failure_threshold:
                self._on_device_failure(replica.device.id, f"{replica.failures} consecutive errors; last: {exc}")
            return True
        return False

    def _prefetch(self, replica: Replica) -> None:
        fut = self._residency.prefetch(replica)
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
            seconds += replica.reload_seconds(self._residency.bandwidth(replica.device.id))
        return seconds

    def _prefetch_done(self, replica: Replica, fut: Any) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is None or replica.queue is None:
            return
        # The queued requests cannot run without their model: fail them with the reason.
        with self._lock:
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
            self._residency.ensure_resident(replica, "queued request")
            session = replica.acquire()
        except NotResident:
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

    def _resubmit(
        self, handle: ModelHandle, live: list[Request], exc: BaseException | None, exclude: Replica | None = None
    ) -> None:
        for r in live:
            if exc is not None and (r.attempts >= 1 or not r.idempotent):
                settle(r, error=_wrap(exc, None))
                continue
            r.attempts += 1 if exc is not None else 0
            try:
                handle.check_ready()
                self.submit(handle, r, exclude)
            except BaseException as err:
                settle(r, error=err)


def _run(session: Session, feeds: Mapping[str, Any], output: str, idempotent: bool) -> dict[str, Any]:
    if isinstance(session, WorkerSession):  # only a worker can crash mid-request and be retried
        return session.run_with_retry(feeds, output, idempotent=idempotent)
    return session.run(feeds, output=output)


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
