"""One placement of a model: its session, residency tier, in-flight count and measured figures."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from aivmm.backends import Config, Session
from aivmm.devices import Device
from aivmm.errors import ModelNotReadyError
from aivmm.memory import Footprint, RateEstimator
from aivmm.models import ModelSpec
from aivmm.runtime._request import ReplicaQueue
from aivmm.runtime._states import Tier


@dataclasses.dataclass(frozen=True)
class Movement:
    """One load or eviction, as data."""

    kind: str  # "load", "load-adopted", "reload-from-host", "evict-to-host", "evict-to-disk"
    seconds: float
    nbytes: int
    at: float  # time.time()
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seconds": round(self.seconds, 6),
            "bytes": self.nbytes,
            "at": round(self.at, 3),
            "reason": self.reason,
        }


_MOVES_KEPT = 32


class Replica:
    """Mutable state of one (config, device) placement; guarded by ``lock``."""

    def __init__(
        self,
        model: str,
        index: int,
        spec: ModelSpec,
        config: Config,
        device: Device,
        footprint: Footprint,
        *,
        isolation: bool = False,
    ) -> None:
        self.model = model
        self.index = index
        self.spec = spec
        self.config = config
        self.device = device
        self.footprint = footprint
        self.isolation = isolation
        self.key = f"{model}#{index}@{device.id}"
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()  # one load at a time per replica
        self.session: Session | None = None  # set if and only if the replica is resident on its device
        self.parked: Session | None = None  # a session offloaded to host memory (the host tier)
        self.tier = Tier.DISK
        # One entry per running request; list.append/pop are atomic, so the fast path needs no lock
        # (see ResidencyManager.evict for the publish/check protocol that makes that safe).
        self.running: list[int] = []
        self.pinned = False  # never evicted (pipeline stages)
        self.queue: ReplicaQueue | None = None  # set when the model is scheduled through a device executor
        self.healthy = True
        self.failures = 0  # consecutive device errors
        self.rate = RateEstimator()
        self.last_used = time.perf_counter()  # the fast path stamps it with perf_counter too
        self.requests = 0
        self.batches = 0
        self.batched_items = 0
        self.errors = 0
        self.loads: list[Movement] = []
        self.evictions: list[Movement] = []
        self.load_count = 0
        self.eviction_count = 0
        self.charged_bytes = footprint.total
        self.latency: dict[int, float] = {}  # EWMA seconds by batch size (races only blur an estimate)

    # --- the hot path: one lock round trip each way, nothing else ---
    def acquire(self) -> Session:
        with self.lock:
            session = self.session
            if self.tier is not Tier.DEVICE or session is None:
                raise NotResident(self.key)
            self.running.append(1)
            self.requests += 1
        self.last_used = time.perf_counter()  # the fast path stamps it with perf_counter too
        return session

    def release(self) -> None:
        self.running.pop()

    @property
    def inflight(self) -> int:
        return len(self.running)

    def request_rate(self, now: float | None = None) -> float:
        return self.rate.rate(self.requests, now)

    def resident(self) -> bool:
        return self.tier is Tier.DEVICE

    # --- measured figures ---
    def observe_latency(self, items: int, seconds: float) -> None:
        old = self.latency.get(items)
        self.latency[items] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def expected_latency(self, items: int) -> float:
        known = self.latency
        if items in known:
            return known[items]
        if known:
            # nearest measured size, scaled linearly (pessimistic for batching, which is sublinear)
            size = min(known, key=lambda s: abs(s - items))
            return known[size] * max(1.0, items / size)
        return 0.0

    def reload_seconds(self, bandwidth: float) -> float:
        """Expected time to bring it back: the last measured load of the same kind, else bytes/bandwidth."""
        if self.loads:
            return self.loads[-1].seconds
        return self.charged_bytes / bandwidth if bandwidth > 0 else 0.0

    def record(self, move: Movement) -> None:
        target = self.loads if move.kind.startswith(("load", "reload")) else self.evictions
        target.append(move)
        del target[:-_MOVES_KEPT]
        if target is self.loads:
            self.load_count += 1
        else:
            self.eviction_count += 1

    def check_usable(self) -> None:
        if not self.healthy:
            raise ModelNotReadyError(f"{self.key}: its device {self.device.id} is unhealthy")


class NotResident(Exception):
    """The replica must be loaded before it can run (the dispatcher loads it and tries again)."""
