"""The memory ledger: bytes reserved and committed per device, never more than its capacity.

Loading follows reserve -> load -> commit (or release on failure), so two concurrent loads can
never both believe the same free bytes are theirs. Every change happens under one lock and
re-checks the capacity inside it; the peak of used bytes is kept so tests can assert that the
budget was never exceeded, however many threads raced.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Mapping

from aivmm.errors import ConfigError, DeviceNotFoundError, OutOfMemoryError
from aivmm.memory._footprint import format_bytes


class EntryState(enum.Enum):
    RESERVED = "reserved"  # admitted, loading
    COMMITTED = "committed"  # loaded and resident


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    device: str
    nbytes: int
    state: EntryState


class Ledger:
    """Thread-safe per-device accounting of resident model bytes."""

    def __init__(self, capacities: Mapping[str, int]) -> None:
        for dev, cap in capacities.items():
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
                raise ConfigError(f"capacity of {dev} must be a non-negative int, got {cap!r}")
        self._lock = threading.Lock()
        self._capacity = dict(capacities)
        self._used = dict.fromkeys(capacities, 0)
        self._peak = dict.fromkeys(capacities, 0)
        self._entries: dict[str, Entry] = {}

    def _check_device(self, device: str) -> None:
        if device not in self._capacity:
            raise DeviceNotFoundError(f"the ledger has no device {device!r}; devices: {sorted(self._capacity)}")

    def capacity(self, device: str) -> int:
        with self._lock:
            self._check_device(device)
            return self._capacity[device]

    def used(self, device: str) -> int:
        with self._lock:
            self._check_device(device)
            return self._used[device]

    def free(self, device: str) -> int:
        with self._lock:
            self._check_device(device)
            return self._capacity[device] - self._used[device]

    def peak(self, device: str) -> int:
        with self._lock:
            self._check_device(device)
            return self._peak[device]

    def devices(self) -> list[str]:
        return sorted(self._capacity)

    def entries(self, device: str | None = None) -> list[Entry]:
        with self._lock:
            return [e for e in self._entries.values() if device is None or e.device == device]

    def entry(self, key: str) -> Entry | None:
        with self._lock:
            return self._entries.get(key)

    def try_reserve(self, key: str, device: str, nbytes: int) -> bool:
        """Reserve ``nbytes`` on ``device`` for ``key`` if they fit; False otherwise."""
        if nbytes < 0:
            raise ConfigError(f"cannot reserve a negative size ({nbytes}) for {key}")
        with self._lock:
            self._check_device(device)
            if key in self._entries:
                raise ConfigError(f"{key} already holds {format_bytes(self._entries[key].nbytes)} on {device}")
            if self._used[device] + nbytes > self._capacity[device]:
                return False
            self._add(Entry(key, device, nbytes, EntryState.RESERVED))
            return True

    def reserve(self, key: str, device: str, nbytes: int) -> None:
        if not self.try_reserve(key, device, nbytes):
            with self._lock:
                free = self._capacity[device] - self._used[device]
                cap = self._capacity[device]
            raise OutOfMemoryError(
                f"{key} needs {format_bytes(nbytes)} on {device} but only {format_bytes(free)} of its"
                f" {format_bytes(cap)} budget is free"
            )

    def commit(self, key: str, nbytes: int | None = None) -> bool:
        """Mark a reservation resident, optionally resized to the measured size.

        Returns False (and keeps the old size) when a larger measured size does not fit, so the
        caller can evict and try again rather than overrun the budget.
        """
        with self._lock:
            entry = self._entries[key]
            size = entry.nbytes if nbytes is None else nbytes
            if size - entry.nbytes > self._capacity[entry.device] - self._used[entry.device]:
                return False
            self._remove(key)
            self._add(Entry(key, entry.device, size, EntryState.COMMITTED))
            return True

    def release(self, key: str) -> int:
        """Forget ``key``; returns the bytes freed (0 when it held nothing)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            self._remove(key)
            return entry.nbytes

    def rename(self, key: str, new_key: str) -> Entry:
        """Move a reservation or commitment to another key in one step (a session changing owner:
        measured while planning, then adopted by the runtime), so its bytes are never free between."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise ConfigError(f"{key} holds nothing in the ledger")
            if new_key in self._entries:
                raise ConfigError(f"{new_key} already holds {format_bytes(self._entries[new_key].nbytes)}")
            del self._entries[key]
            moved = self._entries[new_key] = dataclasses.replace(entry, key=new_key)
            return moved

    def set_capacity(self, device: str, nbytes: int) -> None:
        """Change a budget (a device taken out of service gets 0); existing entries stay charged."""
        with self._lock:
            self._check_device(device)
            self._capacity[device] = nbytes

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                d: {"capacity_bytes": self._capacity[d], "used_bytes": self._used[d], "peak_bytes": self._peak[d]}
                for d in sorted(self._capacity)
            }

    # callers hold the lock
    def _add(self, entry: Entry) -> None:
        self._entries[entry.key] = entry
        self._used[entry.device] += entry.nbytes
        self._peak[entry.device] = max(self._peak[entry.device], self._used[entry.device])

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._used[entry.device] -= entry.nbytes
