"""The one reader of the CPU packages' RAPL energy counters (Linux powercap sysfs).

``/sys/class/powercap/intel-rapl:N/energy_uj`` (also on AMD CPUs, same naming) counts microjoules
per package and wraps at ``max_energy_range_uj``. Sub-zones (``intel-rapl:N:M``: cores, uncore,
DRAM) are inside their package and not added again. Recent kernels make the counter root-only
(a side channel), and VMs rarely expose it, so "not readable, because ..." is the usual answer.

The telemetry meter and the planner's energy counter read through the same reader per root, so
wraparound is corrected in one place and every caller sees one monotonic count (its deltas are
its own: the reader keeps no per-caller state).
"""

from __future__ import annotations

import pathlib
import threading

RAPL_ROOT = "/sys/class/powercap"
_DEFAULT_WRAP_UJ = float(2**32)


class RaplReader:
    """Joules spent by every CPU package since the reader was created."""

    source = "rapl"

    def __init__(self, root: str | pathlib.Path = RAPL_ROOT) -> None:
        self.root = pathlib.Path(root)
        self._lock = threading.Lock()
        self._zones: list[tuple[pathlib.Path, float]] = []  # (energy_uj file, wrap range in uj)
        self.unavailable = self._scan()
        self._last = [_read_uj(path) or 0.0 for path, _ in self._zones]
        self._total_uj = 0.0

    def _scan(self) -> str:
        try:
            zones = sorted(z for z in self.root.glob("intel-rapl:[0-9]*") if z.name.count(":") == 1)
        except OSError as exc:
            return f"RAPL zones under {self.root} not listable: {exc}"
        if not zones:
            return f"no RAPL zones under {self.root}"
        for zone in zones:
            energy = zone / "energy_uj"
            if _read_uj(energy) is None:
                return f"{energy} is not readable (RAPL is root-only on recent kernels)"
            self._zones.append((energy, _read_uj(zone / "max_energy_range_uj") or _DEFAULT_WRAP_UJ))
        return ""

    def read_j(self) -> float:
        """Cumulative joules over all packages (0.0 when unavailable; a zone that fails a read is
        counted from its next readable value)."""
        with self._lock:
            for i, (path, wrap) in enumerate(self._zones):
                now = _read_uj(path)
                if now is None:
                    continue
                delta = now - self._last[i]
                if delta < 0:  # the counter wrapped
                    delta += wrap
                self._total_uj += delta
                self._last[i] = now
            return self._total_uj / 1e6


def _read_uj(path: pathlib.Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


_lock = threading.Lock()
_readers: dict[pathlib.Path, RaplReader] = {}


def rapl_reader(root: str | pathlib.Path = RAPL_ROOT) -> RaplReader:
    """The process's reader of ``root`` (created on first use; one that found nothing is replaced
    by a fresh scan, so a counter made readable later is seen)."""
    key = pathlib.Path(root)
    with _lock:
        reader = _readers.get(key)
        if reader is None or reader.unavailable:
            reader = _readers[key] = RaplReader(key)
        return reader
