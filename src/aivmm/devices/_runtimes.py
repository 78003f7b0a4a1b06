"""Which aivmm backends can drive each device: ``Backend.drives(device)`` for every available
backend. Backends are written independently of discovery, so every failure of one is caught and
reported as a note; discovery never fails because of a backend."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aivmm.devices._types import Device

log = logging.getLogger(__name__)


def runtimes_for(devices: Sequence[Device], progress: dict[str, object]) -> None:
    """Fill ``progress["runtimes"]`` (device id -> backend names) and ``progress["notes"]``.

    Writes into ``progress`` as it goes so a caller that stops waiting keeps what was found.
    """
    found: dict[str, list[str]] = {d.id: [] for d in devices}
    notes: list[str] = []
    progress["runtimes"] = found
    progress["notes"] = notes
    try:
        from aivmm.backends import registry

        entries = registry.entries()
    except Exception as exc:
        notes.append(f"backend registry unusable: {type(exc).__name__}: {exc}")
        return
    for entry in entries:
        if not entry.available.ok:
            why = "; ".join(entry.available.reasons) or "unavailable"
            notes.append(f"{entry.name}: {why}")
            continue
        try:
            backend = registry.get(entry.name)
        except Exception as exc:
            notes.append(f"{entry.name}: {type(exc).__name__}: {exc}")
            continue
        for device in devices:
            try:
                support = backend.drives(device)
            except Exception as exc:
                log.debug("backend %s failed on drives(%s)", entry.name, device.id, exc_info=True)
                notes.append(f"{entry.name}: drives({device.id}) raised {type(exc).__name__}: {exc}")
                continue
            if support:
                found[device.id].append(entry.name)
