"""Least-loaded routing over a model's replicas: pure bookkeeping, no Ray, so it is unit-testable.

A target is one device's copy of a model (its node's engine may run several replicas of it there
behind one queue: ``slots``). The router sends each request to the live target with the fewest
outstanding requests per slot; ties go round-robin so idle targets share the work.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(eq=False)
class Target:
    """One device's copy of a model (one engine entry on its node), as the head sees it."""

    node: str  # cluster label of the node (node-xxxxxxxx)
    device: str  # cluster device id
    local: str  # the device's id on its node
    agent: Any  # how requests reach the copy (a channel pool to its node's agent)
    slots: int = 1
    key: Any = None  # identifies the agent behind ``agent`` (its endpoint)
    outstanding: int = 0
    served: int = 0  # requests answered with outputs
    alive: bool = True

    def load(self) -> float:
        return self.outstanding / max(1, self.slots)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "device": self.device,
            "slots": self.slots,
            "outstanding": self.outstanding,
            "served": self.served,
            "alive": self.alive,
        }


class Router:
    """The targets of one model and their outstanding counts. Thread-safe."""

    def __init__(self, targets: Iterable[Target] = ()) -> None:
        self._lock = threading.Lock()
        self._targets: list[Target] = list(targets)
        self._turn = itertools.count()

    def targets(self) -> list[Target]:
        with self._lock:
            return list(self._targets)

    def add(self, target: Target) -> None:
        with self._lock:
            self._targets.append(target)

    def sync(self, targets: Iterable[Target], skip_nodes: Iterable[str] = ()) -> None:
        """Route to ``targets`` from now on; a target already known (same device and agent) keeps
        its counters, so requests in flight are released against the object that counted them."""
        skip = set(skip_nodes)
        with self._lock:
            old = {(t.device, t.key): t for t in self._targets}
            fresh = []
            for t in targets:
                if t.node in skip:
                    continue
                fresh.append(old.get((t.device, t.key), t))
            for t in self._targets:
                if t not in fresh:
                    t.alive = False
            self._targets = fresh

    def drop_node(self, node: str) -> list[Target]:
        """Forget every target on ``node``; returns them (their work must be re-placed)."""
        with self._lock:
            gone = [t for t in self._targets if t.node == node]
            for t in gone:
                t.alive = False
            self._targets = [t for t in self._targets if t.node != node]
            return gone

    def acquire(self) -> Target | None:
        """The least-loaded live target, with one more request counted against it; None if none."""
        with self._lock:
            live = [t for t in self._targets if t.alive]
            if not live:
                return None
            best = min(t.load() for t in live)
            tied = [t for t in live if t.load() == best]
            target = tied[next(self._turn) % len(tied)]
            target.outstanding += 1
            return target

    def release(self, target: Target, ok: bool = False) -> None:
        with self._lock:
            target.outstanding -= 1
            target.served += ok
