"""Which aivmm backends can drive each device: ``Backend.drives(device)`` for every available
backend. Backends are written independently of discovery, so every failure of one is caught and
reported as a note; discovery never fails because of a backend. Each backend is asked in its own
daemon thread under one deadline, so a backend stuck in its runtime (a CUDA driver call that
hangs) costs the deadline, not the other backends' answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from aivmm.devices._types import Device

log = logging.getLogger(__name__)


def runtimes_for(devices: Sequence[Device], timeout_s: float) -> tuple[dict[str, list[str]], list[str]]:
    """(device id -> backend names that drive it, notes on backends that could not answer)."""
    found: dict[str, list[str]] = {d.id: [] for d in devices}
    notes: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s
    try:
        from aivmm.backends import registry

        entries = registry.entries()
    except Exception as exc:
        return found, [f"backend registry unusable: {type(exc).__name__}: {exc}"]

    def ask(name: str) -> None:
        try:
            backend = registry.get(name)
        except Exception as exc:
            with lock:
                notes.append(f"{name}: {type(exc).__name__}: {exc}")
            return
        for device in devices:
            try:
                support = backend.drives(device)
            except Exception as exc:
                log.debug("backend %s failed on drives(%s)", name, device.id, exc_info=True)
                with lock:
                    notes.append(f"{name}: drives({device.id}) raised {type(exc).__name__}: {exc}")
                continue
            if support:
                with lock:
                    found[device.id].append(name)

    threads: dict[str, threading.Thread] = {}
    for entry in entries:
        if not entry.available.ok:
            notes.append(f"{entry.name}: {'; '.join(entry.available.reasons) or 'unavailable'}")
            continue
        threads[entry.name] = threading.Thread(target=ask, args=(entry.name,), name=f"aivmm-drives-{entry.name}",
                                               daemon=True)
        threads[entry.name].start()
    for name, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            with lock:
                notes.append(f"{name}: drives() did not answer within {timeout_s:g} s; left out")
    order = list(threads)
    with lock:  # registry order, whatever order the threads finished in
        return {k: sorted(v, key=order.index) for k, v in found.items()}, list(notes)
