"""One inference request waiting in a queue, and the bounded per-replica queue (a heap)."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from aivmm.errors import ConfigError, OverloadedError
from aivmm.runtime._batching import BatchingConfig

log = logging.getLogger(__name__)
_seq = itertools.count()


@dataclasses.dataclass(frozen=True)
class RequestOptions:
    """How one request is to run (see ``ModelHandle.infer``): its priority, its deadline in
    milliseconds from now and whether to refuse it once that cannot be met, the output kind, and
    whether it may run twice (retried after a device or worker failure)."""

    priority: int = 0
    deadline_ms: float | None = None
    reject_late: bool = False
    output: str = "numpy"
    idempotent: bool = True

    def __post_init__(self) -> None:
        d = self.deadline_ms
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not d > 0):
            raise ConfigError(f"deadline_ms must be a positive number, got {d!r}")

    def deadline(self) -> float | None:
        """The deadline as a ``time.monotonic()`` instant, counted from now."""
        return None if self.deadline_ms is None else time.monotonic() + self.deadline_ms / 1e3


@dataclasses.dataclass(eq=False)
class Request:
    feeds: dict[str, Any]
    priority: int = 0
    deadline: float | None = None  # time.monotonic() seconds
    reject_late: bool = False
    output: str = "numpy"
    idempotent: bool = True
    items: int = 1
    compat: tuple[Any, ...] | None = None  # requests with equal non-None keys may share a batch
    future: Future[dict[str, Any]] = dataclasses.field(default_factory=Future)
    arrival: float = dataclasses.field(default_factory=time.monotonic)
    seq: int = dataclasses.field(default_factory=lambda: next(_seq))
    attempts: int = 0

    def sort_key(self) -> tuple[int, float, int]:
        """Higher priority first, then earliest deadline, then arrival order."""
        return (-self.priority, math.inf if self.deadline is None else self.deadline, self.seq)

    def __lt__(self, other: Request) -> bool:
        return self.sort_key() < other.sort_key()


def notify_observers(
    observers: list[Callable[[str, float, float], None]], model: str, queue_s: float, compute_s: float
) -> None:
    """Tell each request observer (metrics) how long a request queued and computed; an observer that
    fails is logged, never allowed to fail the request."""
    for fn in observers:
        try:
            fn(model, queue_s, compute_s)
        except Exception:
            log.exception("request observer %r failed", fn)


def settle(request: Request, result: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
    """Complete a request's future once; a future the caller cancelled is left alone."""
    fut = request.future
    if fut.done():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result if result is not None else {})
    except InvalidStateError:  # cancelled between the check and the set
        pass


class ReplicaQueue:
    """Requests waiting for one replica, ordered by :meth:`Request.sort_key`; bounded."""

    def __init__(
        self,
        name: str,
        runner: Callable[[list[Request]], None],
        *,
        batching: BatchingConfig | None,
        batch_dim: int | None,
        limit: int,
        runnable: Callable[[], bool],
        latency: Callable[[int], float],
        stalled: Callable[[], object] = lambda: None,
    ) -> None:
        self.name = name
        self.runner = runner
        self.batching = batching
        self.batch_dim = batch_dim
        self.limit = limit
        self.runnable = runnable  # False while the replica is being (re)loaded
        self.latency = latency  # expected seconds to run a batch of n items
        self.stalled = stalled  # called when requests wait for a replica that is not resident
        self.heap: list[Request] = []
        self.queued_items = 0
        self.running_items = 0
        # Items per recent batch (EWMA), starting at the maximum so the first batches wait as configured.
        self.recent_batch = float(batching.max_batch_size) if batching is not None else 1.0

    def __len__(self) -> int:
        return len(self.heap)

    def push(self, request: Request) -> None:
        if len(self.heap) >= self.limit:
            raise OverloadedError(f"queue of {self.name} is full ({self.limit} requests waiting); retry later")
        heapq.heappush(self.heap, request)
        self.queued_items += request.items

    def pop(self) -> Request:
        request = heapq.heappop(self.heap)
        self.queued_items -= request.items
        return request

    def outstanding(self) -> int:
        return self.queued_items + self.running_items
