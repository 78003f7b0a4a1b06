"""Runtime chatter captured while candidates are measured.

Measuring a candidate that fails makes runtimes talk: dynamo prints a graph-break report of 30
lines, ONNX Runtime and OpenVINO write C++ log lines straight to file descriptor 2. A plan already
says, one line per candidate, what failed and why; the raw text is kept and logged at INFO
(``aivmm -v``) instead of reaching the user's terminal. Python's own ``sys.stderr`` writes to the
same descriptor unless something replaced it, so both it and descriptor 2 are redirected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

from aivmm.backends import registry
from aivmm.errors import AivmmError

log = logging.getLogger(__name__)

# The planner's own library (passes, analysis); each runtime's loggers are named by its backend.
PLANNER_LOGGERS = ("onnx",)
# Captured text logged per candidate is cut to this many characters (the tail is the useful part).
MAX_LOGGED_CHARS = 20_000

_lock = threading.Lock()  # one capture at a time: descriptor 2 is process-wide


def runtime_loggers() -> tuple[str, ...]:
    """Loggers whose records would otherwise reach the root handler during measurement: the
    planner's and those every available backend lists in ``BackendInfo.loggers``."""
    names = set(PLANNER_LOGGERS)
    for entry in registry.names():
        try:
            backend = registry.get(entry)
            if backend.available():
                names.update(backend.info().loggers)
        except AivmmError:  # a backend that cannot be imported is not measured either
            continue
    return tuple(sorted(names))


class Captured:
    """The text the runtimes wrote while a capture was open (empty until it closes)."""

    def __init__(self) -> None:
        self.text = ""


@contextlib.contextmanager
def captured(label: str) -> Iterator[Captured]:
    """Send stderr (descriptor 2), runtime loggers and warnings to a buffer for the duration."""
    out = Captured()
    if not _lock.acquire(blocking=False):  # nested or concurrent: the outer capture already holds it
        yield out
        return
    handler_records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(record)

    keep = _Keep()
    saved: list[tuple[logging.Logger, bool, list[logging.Handler]]] = []
    try:
        for name in runtime_loggers():
            lg = logging.getLogger(name)
            saved.append((lg, lg.propagate, list(lg.handlers)))
            lg.handlers = [keep]
            lg.propagate = False
        with tempfile.TemporaryFile(mode="w+b") as buf, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.suppress(AttributeError, ValueError):
                sys.stderr.flush()
            # Descriptor 2 is the whole process's: a server's own log handlers write there too, so it
            # is redirected only when planning runs on the main thread (a CLI, a deploy call), not
            # in a background re-plan while requests are served. Python-level capture still applies.
            redirect = threading.current_thread() is threading.main_thread()
            old_fd = os.dup(2) if redirect else -1
            if redirect:
                os.dup2(buf.fileno(), 2)
            # sys.stderr may not write to descriptor 2 (a test runner's capture, an IDE): swap it too.
            py_err = io.StringIO()
            old_stderr, sys.stderr = sys.stderr, py_err
            try:
                yield out
            finally:
                sys.stderr = old_stderr
                if redirect:
                    os.dup2(old_fd, 2)
                    os.close(old_fd)
                buf.seek(0)
                parts = [buf.read().decode("utf-8", "replace"), py_err.getvalue()]
                parts.extend(f"{r.name}: {r.getMessage()}" for r in handler_records)
                parts.extend(f"warning: {w.category.__name__}: {w.message}" for w in caught)
                out.text = "\n".join(p.rstrip() for p in parts if p.strip())
    finally:
        for lg, propagate, handlers in saved:
            lg.handlers = handlers
            lg.propagate = propagate
        _lock.release()
    if out.text:
        log.info("runtime output while measuring %s:\n%s", label, out.text[-MAX_LOGGED_CHARS:])
