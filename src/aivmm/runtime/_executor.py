"""One executor per device: worker threads that pick the most urgent ready batch across the
device's replica queues and run it.

A queue is ready when its replica is resident and either batching is off, a full batch is waiting,
the oldest request has waited ``max_queue_delay``, or waiting longer would make its deadline
unreachable. Among ready queues the head with the highest priority and then the earliest deadline
wins (earliest deadline first across models). Requests that asked to be rejected when late are
failed with DeadlineExceededError as soon as their deadline can no longer be met, before they take
device time.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time

from aivmm.errors import DeadlineExceededError, ExecutionError
from aivmm.runtime._request import ReplicaQueue, Request, settle

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # an upper bound on any sleep, so a missed notify costs at most this much


class DeviceExecutor:
    """Worker threads for one device that run the most urgent ready batch of its queues (see the
    module docstring)."""

    def __init__(self, device_id: str, workers: int = 1) -> None:
        self.device_id = device_id
        self.cond = threading.Condition()
        self._queues: list[ReplicaQueue] = []
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"aivmm-exec-{device_id}-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def register(self, queue: ReplicaQueue) -> None:
        """Serve ``queue`` from now on."""
        with self.cond:
            self._queues.append(queue)

    def unregister(self, queue: ReplicaQueue) -> list[Request]:
        """Detach a queue; returns the requests still waiting in it (the caller decides their fate)."""
        with self.cond:
            if queue in self._queues:
                self._queues.remove(queue)
            left = [queue.pop() for _ in range(len(queue))]
            self.cond.notify_all()
            return left

    def submit(self, queue: ReplicaQueue, request: Request) -> None:
        """Queue ``request`` on ``queue`` and wake a worker thread."""
        with self.cond:
            queue.push(request)
            self.cond.notify()

    def wake(self) -> None:
        """Look at the queues again (a replica became resident)."""
        with self.cond:
            self.cond.notify_all()

    def close(self) -> None:
        """Stop the worker threads (bounded join); queued requests stay queued."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self._closed:
                    return
                picked, wait = self._pick(time.monotonic())
                if picked is None:
                    self.cond.wait(min(wait, _IDLE_WAIT_S))
                    continue
                queue, batch = picked
                items = sum(r.items for r in batch)
                queue.running_items += items
                queue.recent_batch = 0.8 * queue.recent_batch + 0.2 * items
            try:
                queue.runner(batch)
            except BaseException as exc:  # the runner must settle its futures; this is the safety net
                log.exception("runner of %s raised", queue.name)
                for r in batch:
                    settle(r, error=ExecutionError(f"{queue.name}: internal error: {exc!r}"))
            finally:
                with self.cond:
                    queue.running_items -= sum(r.items for r in batch)

    # called with the condition held
    def _pick(self, now: float) -> tuple[tuple[ReplicaQueue, list[Request]] | None, float]:
        best: ReplicaQueue | None = None
        wait = _IDLE_WAIT_S
        for queue in self._queues:
            self._reject_late(queue, now)
            if not queue.heap:
                continue
            if not queue.runnable():
                # Evicted while requests waited for it: have it brought back (deduplicated upstream).
                queue.stalled()
                continue
            ready, until = self.batch_ready(queue, now)
            if not ready:
                wait = min(wait, until)
                continue
            if best is None or queue.heap[0].sort_key() < best.heap[0].sort_key():
                best = queue
        if best is None:
            return None, max(wait, 0.0)
        return (best, self._take_batch(best)), 0.0

    @staticmethod
    def batch_ready(queue: ReplicaQueue, now: float) -> tuple[bool, float]:
        """Whether ``queue``'s head batch should run at ``now``, else the seconds it may still wait
        (the dynamic batching decision: full, work-conserving, queue delay or a deadline reached)."""
        cfg = queue.batching
        if cfg is None or cfg.max_batch_size == 1:
            return True, 0.0
        if queue.queued_items >= cfg.max_batch_size:
            return True, 0.0
        # Work-conserving: with nothing of this queue running, as many items as recent batches held
        # is as big as waiting is likely to make it (a closed loop of N clients never brings more
        # than N), so the delay would only add latency. At low load that is one item: no delay.
        if queue.running_items == 0 and queue.queued_items >= math.ceil(queue.recent_batch - 1e-9):
            return True, 0.0
        head = queue.heap[0]
        waited = now - min(head.arrival, min(r.arrival for r in queue.heap))
        until = cfg.max_queue_delay_s - waited
        if head.deadline is not None:
            # Flush early when waiting any longer would make the head miss its deadline.
            until = min(until, head.deadline - now - queue.latency(queue.queued_items))
        return until <= 0, until

    @staticmethod
    def _reject_late(queue: ReplicaQueue, now: float) -> None:
        if not any(r.reject_late and r.deadline is not None for r in queue.heap):
            return
        keep: list[Request] = []
        expected = queue.latency(1)
        for r in queue.heap:
            if r.reject_late and r.deadline is not None and now + expected > r.deadline:
                late_ms = (now + expected - r.deadline) * 1e3
                settle(
                    r,
                    error=DeadlineExceededError(
                        f"{queue.name}: request cannot meet its deadline (would finish {late_ms:.1f} ms late,"
                        f" expected run time {expected * 1e3:.1f} ms); rejected before running"
                    ),
                )
                queue.queued_items -= r.items
            else:
                keep.append(r)
        heapq.heapify(keep)
        queue.heap[:] = keep

    @staticmethod
    def _take_batch(queue: ReplicaQueue) -> list[Request]:
        first = queue.pop()
        cfg = queue.batching
        if cfg is None or first.compat is None or queue.batch_dim is None:
            return [first]
        batch = [first]
        total = first.items
        aside: list[Request] = []
        while queue.heap and total < cfg.max_batch_size:
            r = queue.pop()
            if r.compat == first.compat and total + r.items <= cfg.max_batch_size:
                batch.append(r)
                total += r.items
            else:
                aside.append(r)
        for r in aside:
            queue.push(r)
        return batch
