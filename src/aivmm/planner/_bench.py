"""The sessions a plan measures through, held under the memory ledger and kept for the runtime.

The planner opens every session it times here. While open, a session holds a reservation in the
ledger the runtime loads under (when there is one), so measuring never overruns a budget that
deployed models share, and the ledger's free bytes are what the planner plans against. Sessions of
candidates that can still win stay open: the finalist race times them in place, and the winner's
session, warmed, is handed to the runtime (:meth:`Bench.take`) to adopt instead of loading the
model again. Every other session is closed, and its reservation released, as soon as its
candidate is out (:meth:`Bench.discard`) and at the latest when the plan ends (:meth:`Bench.close`).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from aivmm.backends import Backend, Config, Session
from aivmm.devices import Device
from aivmm.errors import OutOfMemoryError
from aivmm.models import ModelSpec

if TYPE_CHECKING:  # aivmm.memory imports the planner's constraints: imported when first used here
    from aivmm.memory import Ledger

log = logging.getLogger(__name__)

_ids = itertools.count()


@dataclasses.dataclass(frozen=True)
class Held:
    """A session measured while planning and what it holds: the runtime adopts both."""

    session: Session
    ledger_key: str | None  # its reservation in the bench's ledger (None when planned without one)

    def close(self, ledger: Ledger | None) -> None:
        try:
            self.session.close()
        finally:
            if ledger is not None and self.ledger_key is not None:
                ledger.release(self.ledger_key)


def _is_oom(exc: BaseException) -> bool:
    # The runtime's own test (runtime.is_out_of_memory) is not public; this is its short form.
    return isinstance(exc, OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()


class Bench:
    """Open measurement sessions of one plan, keyed by the candidate they measure.

    ``ledger``: reserve each session's footprint there while it is open (None: unaccounted, as for
    a plan made outside a VMM). ``make_room(device_id, nbytes)``: free ledger bytes by evicting
    idle deployed models, used only when this bench's own idle sessions are not enough.
    """

    def __init__(
        self, ledger: Ledger | None = None, *, make_room: Callable[[str, int], int] | None = None, owner: str = "plan"
    ) -> None:
        self.ledger = ledger
        self._make_room = make_room
        self._owner = owner
        self._held: dict[Hashable, Held] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, identity: Hashable) -> Session | None:
        with self._lock:
            held = self._held.get(identity)
        return held.session if held is not None else None

    def open(
        self, identity: Hashable, backend: Backend, model: ModelSpec, device: Device, config: Config, *, batch: int = 1
    ) -> Session:
        """The open session of ``identity``, or a new one reserved in the ledger and loaded."""
        found = self.get(identity)
        if found is not None:
            return found
        key = self._reserve(identity, model, device, config, batch)
        try:
            try:
                session = backend.load(model, device, config)
            except Exception as exc:
                # The device had less than believed (a simulated device charges every open session):
                # close this bench's idle sessions there and try once more.
                if not _is_oom(exc) or not self._close_idle(device.id, identity):
                    raise
                session = backend.load(model, device, config)
        except BaseException:
            if key is not None and self.ledger is not None:
                self.ledger.release(key)
            raise
        if key is not None and self.ledger is not None:
            measured = session.memory_bytes()
            entry = self.ledger.entry(key)
            # A larger measured size that does not fit stays charged as estimated.
            if entry is not None and not (measured > entry.nbytes and self.ledger.commit(key, measured)):
                self.ledger.commit(key)
        with self._lock:
            self._held[identity] = Held(session, key)
        return session

    def _reserve(self, identity: Hashable, model: ModelSpec, device: Device, config: Config, batch: int) -> str | None:
        from aivmm.memory import estimate, format_bytes

        ledger = self.ledger
        if ledger is None or device.id not in ledger.devices():
            return None
        need = estimate(model, config.precision, batch).total
        key = f"{self._owner}/measure{next(_ids)}@{device.id}"
        if ledger.try_reserve(key, device.id, need):
            return key
        # This plan's own idle sessions go first, one at a time, oldest first (the earliest measured
        # are the likeliest to have been beaten since), then idle deployed models.
        for victim in self._others(device.id, identity):
            self.discard(victim)
            if ledger.try_reserve(key, device.id, need):
                return key
        if self._make_room is not None:
            self._make_room(device.id, need - ledger.free(device.id))
            if ledger.try_reserve(key, device.id, need):
                return key
        raise OutOfMemoryError(
            f"measuring {config.label()} needs {format_bytes(need)} on {device.id}; "
            f"{format_bytes(ledger.free(device.id))} of its {format_bytes(ledger.capacity(device.id))} budget "
            "is free in the memory ledger"
        )

    def _others(self, device_id: str, keep: Hashable) -> list[Hashable]:
        with self._lock:
            return [i for i, h in self._held.items() if i != keep and h.session.device.id == device_id]

    def _close_idle(self, device_id: str, keep: Hashable) -> bool:
        """Close this bench's sessions on ``device_id`` (all but ``keep``); True if any was closed."""
        victims = self._others(device_id, keep)
        for identity in victims:
            self.discard(identity)
        if victims:
            log.info(
                "closed %d measured session(s) on %s to make room for the next measurement", len(victims), device_id
            )
        return bool(victims)

    def discard(self, identity: Hashable, *, collect: bool = True) -> None:
        """Close the session of ``identity`` (if open) and release its reservation. ``collect=False``
        leaves the garbage collection (~0.1 s in a process with torch loaded) to the caller, which
        closes several."""
        with self._lock:
            held = self._held.pop(identity, None)
        if held is not None:
            held.close(self.ledger)
            if collect:
                gc.collect()  # runtimes free device memory when their session objects are collected

    def keep_only(self, identities: Any) -> None:
        """Close every session but those of ``identities``."""
        wanted = set(identities)
        with self._lock:
            losers = [i for i in self._held if i not in wanted]
        for identity in losers:
            self.discard(identity, collect=False)
        if losers:
            gc.collect()

    def take(self, identity: Hashable) -> Held | None:
        """Hand the session of ``identity`` over: the caller owns it (and its reservation) from now."""
        with self._lock:
            return self._held.pop(identity, None)

    def close(self) -> None:
        """Close every session still held and release their reservations."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for h in held:
            try:
                h.close(self.ledger)
            except Exception:  # one broken session must not keep the others' memory
                log.exception("closing a measured session failed")
        if held:
            gc.collect()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)
