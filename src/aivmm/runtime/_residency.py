"""Residency: admission through the ledger, loads, evictions between tiers, prefetch.

Loading a replica is reserve -> load -> commit (release on failure). When the reservation does not
fit, the eviction policy chooses idle victims on that device under the device's lock, with a second
check of each victim inside its own lock, so a request that just started keeps its model. A load
that still hits out-of-memory (the device had less than the ledger believed) evicts once more and
retries once; the process never dies of it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from aivmm.backends import Session
from aivmm.errors import ModelTooLargeError, OutOfMemoryError
from aivmm.memory import Candidate, CostBenefitPolicy, Eviction, EvictionPolicy, Ledger, format_bytes
from aivmm.runtime._replica import Movement, Replica
from aivmm.runtime._states import Tier

log = logging.getLogger(__name__)

DEFAULT_BANDWIDTH = 1e9  # bytes/s before any load on the device was measured
_DECISIONS_KEPT = 32


def is_out_of_memory(exc: BaseException) -> bool:
    """aivmm's error, MemoryError, and runtime errors that say so (torch.cuda.OutOfMemoryError is a
    RuntimeError subclass named OutOfMemoryError; ORT reports failed allocations in its message)."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


class WarmSession(Protocol):
    """A session loaded (and run) before its replica existed, with the ledger reservation it holds:
    what the planner hands over so the runtime adopts its measured session (``planner.Held``)."""

    @property
    def session(self) -> Session: ...

    @property
    def ledger_key(self) -> str | None: ...


class ResidencyManager:
    """Which replicas are on which device, and moving them (see the module docstring). Thread-safe."""

    def __init__(
        self,
        ledger: Ledger,
        open_session: Callable[[Replica], Session],
        *,
        policy: EvictionPolicy | None = None,
        on_resident: Callable[[Replica], None] = lambda r: None,
        admission_timeout_s: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.policy = policy or CostBenefitPolicy()
        self._open = open_session
        self._on_resident = on_resident
        self._timeout = admission_timeout_s
        self._device_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._replicas: dict[str, list[Replica]] = collections.defaultdict(list)
        self._bandwidth: dict[str, float] = {}
        self._lock = threading.Lock()
        self._prefetching: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aivmm-prefetch")
        self.decisions: collections.deque[tuple[str, Eviction]] = collections.deque(maxlen=_DECISIONS_KEPT)

    def register(self, replica: Replica) -> None:
        """Make ``replica`` a candidate for loading and eviction on its device."""
        with self._lock:
            self._replicas[replica.device.id].append(replica)

    def unregister(self, replica: Replica) -> None:
        """Forget ``replica`` (``unload`` calls it)."""
        with self._lock:
            group = self._replicas.get(replica.device.id, [])
            if replica in group:
                group.remove(replica)

    def resident_on(self, device_id: str) -> list[Replica]:
        """The replicas whose session is on ``device_id`` now."""
        with self._lock:
            return [r for r in self._replicas.get(device_id, []) if r.tier is Tier.DEVICE]

    def bandwidth(self, device_id: str) -> float:
        """Bytes/s of recent loads onto ``device_id`` (an EWMA; a default before the first)."""
        return self._bandwidth.get(device_id, DEFAULT_BANDWIDTH)

    # --- loading ---
    def prefetch(self, replica: Replica) -> Future[None]:
        """Start loading a replica in the background (a request for it is queued)."""
        with self._lock:
            fut = self._prefetching.get(replica.key)
            if fut is not None and not fut.done():
                return fut
            fut = self._pool.submit(self.ensure_resident, replica, "prefetch for a queued request")
            self._prefetching[replica.key] = fut
            return fut

    def ensure_resident(self, replica: Replica, reason: str = "request") -> None:
        """Load ``replica`` onto its device unless it is there: reserve (evicting idle replicas when
        needed), open or reload its session, commit the measured size; raises ModelTooLargeError or
        OutOfMemoryError when it cannot."""
        if replica.tier is Tier.DEVICE:
            return
        with replica.load_lock:
            if replica.resident():  # loaded by another thread while this one waited for the lock
                return
            dev = replica.device.id
            need = replica.charged_bytes
            capacity = self.ledger.capacity(dev)
            if need > capacity:
                raise ModelTooLargeError(
                    f"{replica.key} needs {format_bytes(need)} (weights"
                    f" {format_bytes(replica.footprint.weights_bytes)} + activations"
                    f" {format_bytes(replica.footprint.activation_bytes)}) but the budget of {dev} is"
                    f" {format_bytes(capacity)}"
                )
            self._admit(replica, need)
            try:
                try:
                    session = self._bring_in(replica, reason)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    # The device had less than the ledger believed (another process, fragmentation):
                    # free the same amount again and retry once.
                    log.warning("%s: out of memory while loading (%s); evicting and retrying once", replica.key, exc)
                    self.make_room(dev, need, exclude=replica, reason=f"out of memory loading {replica.key}")
                    try:
                        session = self._bring_in(replica, reason + " (retry after out-of-memory)")
                    except Exception as exc2:
                        if is_out_of_memory(exc2):
                            raise OutOfMemoryError(
                                f"{replica.key}: out of memory on {dev} twice while loading"
                                f" {format_bytes(need)}: {exc2}"
                            ) from exc2
                        raise
            except BaseException:
                self.ledger.release(replica.key)
                raise
            measured = session.memory_bytes()
            if measured > need and not self.ledger.commit(replica.key, measured):
                # The session holds more than estimated and that does not fit: make room for the difference.
                self.make_room(dev, measured - need, exclude=replica, reason=f"{replica.key} measured larger")
                if not self.ledger.commit(replica.key, measured):
                    self.ledger.commit(replica.key)
                    log.warning("%s holds %d bytes, %d charged: budget too small", replica.key, measured, need)
            elif measured <= need:
                self.ledger.commit(replica.key)
            with replica.lock:
                replica.charged_bytes = max(need, measured)
                replica.parked = None
                replica.tier = Tier.DEVICE
                replica.session = session  # published last: the fast path reads only this
        self._on_resident(replica)

    def adopt(self, replica: Replica, session: Session, held_key: str | None, reason: str) -> None:
        """Make ``session``, already loaded (measured while planning), the replica's resident session
        instead of loading the model again. Its ledger reservation ``held_key`` moves to the replica
        in one step; without one the replica is admitted as a load is. The session is closed if it
        cannot be admitted."""
        with replica.load_lock:
            try:
                if replica.resident():
                    raise ValueError(f"{replica.key} is already resident")
                if held_key is not None and self.ledger.entry(held_key) is not None:
                    self.ledger.rename(held_key, replica.key)
                else:
                    self._admit(replica, replica.charged_bytes)
            except BaseException:
                session.close()
                if held_key is not None:
                    self.ledger.release(held_key)
                raise
            entry = self.ledger.entry(replica.key)
            target = max(replica.charged_bytes, session.memory_bytes())
            if entry is not None and target != entry.nbytes and not self.ledger.commit(replica.key, target):
                self.make_room(
                    replica.device.id,
                    target - entry.nbytes,
                    exclude=replica,
                    reason=f"{replica.key} adopted larger than measured",
                )
                if not self.ledger.commit(replica.key, target):
                    self.ledger.commit(replica.key)
                    log.warning("%s holds %d bytes, %d charged: budget too small", replica.key, target, entry.nbytes)
            elif entry is not None:
                self.ledger.commit(replica.key)
            # The session's own load time, so reload estimates stay what a real load costs.
            replica.record(
                Movement("load-adopted", session.report.seconds, replica.footprint.weights_bytes, time.time(), reason)
            )
            with replica.lock:
                final = self.ledger.entry(replica.key)
                replica.charged_bytes = final.nbytes if final is not None else target
                replica.parked = None
                replica.tier = Tier.DEVICE
                replica.session = session  # published last: the fast path reads only this
        self._on_resident(replica)

    def _admit(self, replica: Replica, need: int) -> None:
        dev = replica.device.id
        deadline = time.monotonic() + self._timeout
        while True:
            with self._device_locks[dev]:
                if self.ledger.try_reserve(replica.key, dev, need):
                    return
                self._evict_for(dev, need - self.ledger.free(dev), exclude=replica, reason=f"admit {replica.key}")
                if self.ledger.try_reserve(replica.key, dev, need):
                    return
            if time.monotonic() >= deadline:
                busy = [
                    f"{r.key} ({format_bytes(r.charged_bytes)}, {r.inflight} running)" for r in self.resident_on(dev)
                ]
                raise OutOfMemoryError(
                    f"{replica.key} needs {format_bytes(need)} on {dev}; {format_bytes(self.ledger.free(dev))} free of"
                    f" {format_bytes(self.ledger.capacity(dev))} and every resident model is busy or pinned: {busy}"
                )
            time.sleep(0.002)  # the victims are running; they will be idle within a request

    def _bring_in(self, replica: Replica, reason: str) -> Session:
        start = time.perf_counter()
        if replica.tier is Tier.HOST and replica.parked is not None:
            session = replica.parked
            session.reload_to_device()
            kind = "reload-from-host"
        else:
            session = self._open(replica)
            kind = "load"
        seconds = time.perf_counter() - start
        nbytes = replica.footprint.weights_bytes
        if seconds > 0 and nbytes > 0:
            bw = nbytes / seconds
            old = self._bandwidth.get(replica.device.id)
            self._bandwidth[replica.device.id] = bw if old is None else 0.7 * old + 0.3 * bw
        replica.record(Movement(kind, seconds, nbytes, time.time(), reason))
        return session

    # --- eviction ---
    def make_room(self, device_id: str, nbytes: int, *, exclude: Replica | None = None, reason: str = "") -> int:
        """Evict idle replicas on ``device_id`` (chosen by the policy) to free ``nbytes``; returns the bytes freed."""
        with self._device_locks[device_id]:
            return self._evict_for(device_id, nbytes, exclude=exclude, reason=reason)

    def _evict_for(self, device_id: str, need: int, *, exclude: Replica | None, reason: str) -> int:
        """Evict idle replicas chosen by the policy; caller holds the device lock."""
        if need <= 0 and not getattr(self.policy, "max_models", None):
            return 0
        now = time.monotonic()
        resident = [r for r in self.resident_on(device_id) if r is not exclude]
        idle = [r for r in resident if r.inflight == 0 and not r.pinned]
        # Models with requests already waiting are kept while anything else can go.
        quiet = [r for r in idle if r.queue is None or r.queue.queued_items == 0]
        pool = quiet if sum(r.charged_bytes for r in quiet) >= need else idle
        bw = self.bandwidth(device_id)
        with self._lock:
            everyone = list(self._replicas.get(device_id, []))
        rates = {r.key: r.request_rate(now) for r in everyone}
        device_rate = sum(rates.values())
        candidates = [
            Candidate(r.key, r.charged_bytes, r.reload_seconds(bw), rates.get(r.key, 0.0), r.last_used, device_rate)
            for r in pool
        ]
        decision = self.policy.choose(candidates, max(0, need), resident_count=len(resident))
        if not decision.victims:
            return 0
        self.decisions.append((reason, decision))
        by_key = {r.key: r for r in pool}
        return sum(self.evict(by_key[k], reason=reason) for k in decision.victims)

    def evict(self, replica: Replica, *, reason: str = "", to_disk: bool = False) -> int:
        """Move a resident, idle replica off its device; returns the bytes freed (0 if busy)."""
        with replica.lock:
            session = replica.session
            if replica.tier is not Tier.DEVICE or replica.running or session is None:
                return 0
            # Unpublish first, then look again: a lock-free fast-path caller either registered in
            # ``running`` before this second look (we back off) or will find no session (and takes
            # the slow path, which waits for this lock).
            replica.session = None
            if replica.running:
                replica.session = session
                return 0
            start = time.perf_counter()
            if not to_disk and not replica.isolation and session.offload_to_host():
                replica.parked = session
                replica.tier = Tier.HOST
                kind = "evict-to-host"
            else:
                session.close()
                replica.tier = Tier.DISK
                kind = "evict-to-disk"
            freed = self.ledger.release(replica.key)
            replica.record(Movement(kind, time.perf_counter() - start, freed, time.time(), reason))
            return freed

    def unload(self, replica: Replica, *, timeout_s: float = 30.0) -> None:
        """Close a replica for good: wait (bounded) for its running requests, then free everything."""
        deadline = time.monotonic() + timeout_s
        with replica.lock:  # unpublish: no new request can start on it
            session = replica.session or replica.parked
            replica.session = None
        # Polled rather than signalled: a condition notify on every request would tax the fast path.
        while replica.running and time.monotonic() < deadline:
            time.sleep(0.001)
        with replica.load_lock:  # a load in progress finishes first, then is undone here
            with replica.lock:
                session = session or replica.session or replica.parked
                replica.session = None
                replica.parked = None
                replica.tier = Tier.DISK
            if session is not None:
                session.close()
            self.ledger.release(replica.key)
        self.unregister(replica)

    def close(self) -> None:
        """Stop the prefetch pool (queued prefetches are cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
