"""Which resident models to evict: a cost-benefit policy and the LRU baselines it is measured against.

The cost of evicting a model is the waiting its next reload causes (its measured reload time, or
bytes over the measured load bandwidth, for its own request plus the requests for other models that
queue behind the busy device meanwhile) times how often requests for it come (an exponentially
decayed rate). Dividing by the bytes freed gives the loss per byte; the policy frees
the bytes it needs at the least expected loss. Plain LRU ignores both: it evicts a huge model that
is cheap to reload and rarely used exactly like a tiny hot one, and Ray Serve's multiplexing even
counts models instead of bytes.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import threading
import time
from collections.abc import Sequence


class RateEstimator:
    """Requests per second, decayed exponentially with ``half_life_s``, sampled from a counter.

    The serving path only increments a request counter (no lock, no clock, no ``exp``); the rate is
    brought up to date when someone asks for it: the requests counted since the last sample are
    treated as having arrived at the sampling time, which is exact in aggregate for the EWMA.
    """

    def __init__(self, half_life_s: float = 30.0) -> None:
        self._tau = half_life_s / math.log(2.0)
        self._value = 0.0
        self._count = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def rate(self, total: int, now: float | None = None) -> float:
        """The rate given the counter's current ``total``."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if self._last is not None:
                self._value *= math.exp(-max(0.0, t - self._last) / self._tau)
            self._value += max(0, total - self._count) / self._tau
            self._count = max(self._count, total)
            self._last = t if self._last is None else max(self._last, t)
            return self._value


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A resident model the policy may evict."""

    key: str
    nbytes: int
    reload_seconds: float  # expected time to bring it back
    rate: float  # expected requests per second for this model
    last_used: float  # perf_counter seconds (only compared with each other)
    device_rate: float = 0.0  # expected requests per second for every model on the device

    @property
    def loss(self) -> float:
        """Expected seconds of waiting per second caused by evicting it.

        Each reload of length r delays its own request by r and, while the device is busy loading,
        the requests for other models that arrive meanwhile (device_rate x r of them, waiting r/2
        on average): r x (1 + device_rate x r / 2). So long reloads weigh more than their length,
        which is what a latency SLO feels.
        """
        r = self.reload_seconds
        return self.rate * r * (1.0 + self.device_rate * r / 2.0)


@dataclasses.dataclass(frozen=True)
class Eviction:
    """A decision: the victims in order, and why, as data."""

    victims: tuple[str, ...]
    freed_bytes: int
    enough: bool
    reasons: tuple[str, ...]


class EvictionPolicy(abc.ABC):
    name: str = "policy"

    def choose(self, candidates: Sequence[Candidate], need_bytes: int, *, resident_count: int = 0) -> Eviction:
        """Victims freeing at least ``need_bytes`` (``enough`` False when all of them would not)."""
        ordered = self._order(candidates)
        victims: list[str] = []
        reasons: list[str] = []
        freed = 0
        for cand in ordered:
            if freed >= need_bytes and not self._must_evict_more(resident_count - len(victims)):
                break
            victims.append(cand.key)
            freed += cand.nbytes
            reasons.append(self._why(cand))
        return Eviction(tuple(victims), freed, freed >= need_bytes, tuple(reasons))

    @abc.abstractmethod
    def _order(self, candidates: Sequence[Candidate]) -> list[Candidate]: ...

    def _must_evict_more(self, resident_after: int) -> bool:
        return False

    def _why(self, cand: Candidate) -> str:
        return f"{cand.key}: {cand.nbytes} bytes"


class CostBenefitPolicy(EvictionPolicy):
    """Evict the least expected waiting per byte freed first; ties go to the least recently used."""

    name = "cost-benefit"

    def _order(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.loss / max(1, c.nbytes), c.last_used))

    def _why(self, cand: Candidate) -> str:
        return (
            f"{cand.key}: {cand.rate:.3g} req/s x {cand.reload_seconds * 1e3:.3g} ms reload"
            f" (device {cand.device_rate:.3g} req/s) = {cand.loss:.3g} s/s for {cand.nbytes} bytes"
        )


class LruPolicy(EvictionPolicy):
    """Least recently used first, bytes-aware (a baseline)."""

    name = "lru"

    def _order(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.last_used)

    def _why(self, cand: Candidate) -> str:
        return f"{cand.key}: least recently used"


class CountLruPolicy(LruPolicy):
    """Ray Serve multiplexing's rule: at most ``max_models`` resident per device, LRU evicted (a baseline).

    The ledger still refuses to overrun a budget, so bytes are freed too when the count alone would
    not make room.
    """

    name = "count-lru"

    def __init__(self, max_models: int) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.max_models = max_models

    def _must_evict_more(self, resident_after: int) -> bool:
        return resident_after >= self.max_models
