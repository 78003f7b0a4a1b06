"""Which aivmm backends can drive each device: ``Backend.drives(device)`` for every available
backend. Backends are written independently of discovery, so every failure of one is caught and
reported as a note; discovery never fails because of a backend. Each backend is asked in its own
daemon thread under one deadline, so a backend stuck in its runtime (a CUDA driver call that
hangs) costs the deadline, not the other backends' answers.

A backend still *importing* its runtime at the deadline is not stuck: importing torch takes
seconds, and tens of seconds on a loaded machine. Leaving it out would make an installed runtime
look missing for the whole process, so such a backend is waited for while it imports (up to
``import_timeout_s``), and its slowness is noted instead."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence

from aivmm.devices._types import Device

log = logging.getLogger(__name__)


# After a late import finishes, the backend's drives() gets this long to answer.
_AFTER_IMPORT_S = 2.0


def importing(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside Python's import machinery now (loading a module, not stuck in a call).

    Read from the thread's current frame stack (``sys._current_frames``, CPython's); False elsewhere.
    """
    frames = getattr(sys, "_current_frames", None)
    frame = frames().get(thread.ident) if frames is not None and thread.ident is not None else None
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _join(thread: threading.Thread, deadline: float, hard_deadline: float) -> float:
    """Wait for ``thread`` until ``deadline``; past it, keep waiting while it imports (to ``hard_deadline``).
    Returns how long it was waited for past the deadline because it was importing (0.0: not at all)."""
    thread.join(max(0.0, deadline - time.monotonic()))
    until, extended = deadline, 0.0
    while thread.is_alive():
        now = time.monotonic()
        if now >= hard_deadline:
            break
        if importing(thread):
            until = max(until, now + _AFTER_IMPORT_S)
            extended = now - deadline
        elif now >= until:
            break
        thread.join(min(0.05, max(0.0, until - now)))
    return max(0.0, time.monotonic() - deadline) if extended else 0.0


def runtimes_for(
    devices: Sequence[Device], timeout_s: float, import_timeout_s: float | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    """(device id -> backend names that drive it, notes on backends that could not answer, or answered late).

    ``import_timeout_s`` (default: ``timeout_s``) bounds how long a backend still importing its runtime
    at the deadline is waited for, counted from the start."""
    found: dict[str, list[str]] = {d.id: [] for d in devices}
    notes: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + timeout_s
    hard_deadline = start + max(timeout_s, import_timeout_s or timeout_s)
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
        threads[entry.name] = threading.Thread(
            target=ask, args=(entry.name,), name=f"aivmm-drives-{entry.name}", daemon=True
        )
        threads[entry.name].start()
    for name, thread in threads.items():
        late = _join(thread, deadline, hard_deadline)
        if thread.is_alive():
            with lock:
                if late:
                    notes.append(
                        f"{name}: still importing its runtime after {time.monotonic() - start:.1f} s "
                        f"(waited past the {timeout_s:g} s deadline while it imported); left out"
                    )
                else:
                    notes.append(f"{name}: drives() did not answer within {timeout_s:g} s; left out")
        elif late:
            with lock:
                notes.append(
                    f"{name}: slow: importing its runtime took it {timeout_s + late:.1f} s, past the "
                    f"{timeout_s:g} s deadline (a loaded machine?); waited for it, not left out"
                )
    order = list(threads)
    with lock:  # registry order, whatever order the threads finished in
        return {k: sorted(v, key=order.index) for k, v in found.items()}, list(notes)
