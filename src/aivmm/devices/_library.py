"""The one initialisation per process of each vendor management library (NVML, amdsmi).

NVML and amdsmi are reference-counted libraries: every ``nvmlInit`` needs its ``nvmlShutdown``, and
each initialisation costs a driver round trip (tens of milliseconds on a machine with many GPUs).
Discovery, the telemetry meters and the planner's energy counters all read the same library, so
they share one :class:`LibrarySession` per library: initialised on first use, shut down at
interpreter exit, and initialised again in a forked child (a handle must not cross ``fork``).

A session never raises to its users: ``library()`` answers the initialised module, or None and
why (not installed, naming the extra; or the init error). Only a success is kept: a failed
attempt (no driver: the library is not found within milliseconds) is tried again next time, so
a driver loaded later is seen. A stalled initialisation (a hung driver) holds the lock; others
wait at most ``wait_s`` and are told so instead of hanging.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any


class LibrarySession:
    """One vendor library, initialised at most once per process.

    ``module`` replaces the imported library (tests pass a recorded fake); ``init``/``shutdown``
    name its functions.
    """

    def __init__(
        self, import_name: str, init: str, shutdown: str, install_hint: str, *, module: Any = None, wait_s: float = 5.0
    ) -> None:
        self.import_name = import_name
        self._init_name = init
        self._shutdown_name = shutdown
        self._install_hint = install_hint
        self._given = module
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._module: Any = None
        self._pid: int | None = None  # the process whose initialisation this is

    def library(self) -> tuple[Any, str]:
        """The initialised module, or ``(None, why)``."""
        module = self._module  # read before the pid: close() clears the pid first
        if module is not None and self._pid == os.getpid():  # initialised in this process: no lock
            return module, ""
        if not self._lock.acquire(timeout=self._wait_s):
            return (
                None,
                f"{self.import_name} initialisation has not returned after {self._wait_s:g} s (stalled driver?)",
            )
        try:
            if self._pid == os.getpid():
                return self._module, ""
            module, why = self._initialise()
            if module is not None:
                self._module, self._pid = module, os.getpid()
            return module, why
        finally:
            self._lock.release()

    def _initialise(self) -> tuple[Any, str]:
        module = self._given
        if module is None:
            try:
                module = importlib.import_module(self.import_name)
            except ImportError:
                return None, self.not_installed
            except Exception as exc:  # ROCm's amdsmi raises OSError at import when libamd_smi is missing
                return None, f"{self.import_name} unusable ({describe(exc)})"
        try:
            self._call_init(module)
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: the reason is the point
            return None, f"{self._init_name} failed: {describe(exc)}"
        return module, ""

    @classmethod
    def nvml(cls, module: Any = None) -> LibrarySession:
        return cls("pynvml", "nvmlInit", "nvmlShutdown", 'pip install "aivmm[nvidia]"', module=module)

    @classmethod
    def amdsmi(cls, module: Any = None) -> LibrarySession:
        return cls("amdsmi", "amdsmi_init", "amdsmi_shut_down", "it ships with ROCm", module=module)

    def _call_init(self, module: Any) -> None:
        init = getattr(module, self._init_name)
        # amdsmi takes which processors to initialise; GPUs only (CPU support needs the esmi driver)
        flags = getattr(getattr(module, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
        init(flags) if flags is not None else init()

    @property
    def not_installed(self) -> str:
        return f"{self.import_name} is not installed ({self._install_hint})"

    @property
    def initialised(self) -> bool:
        return self._pid == os.getpid() and self._module is not None

    def close(self) -> None:
        """Shut the library down if this process initialised it; the next ``library()`` starts again.

        An initialisation still in progress (a stalled driver call holding the lock) is left alone
        after a short wait: interpreter exit must not hang on it, and shutting down under it is unsafe.
        """
        if not self._lock.acquire(timeout=min(self._wait_s, 1.0)):
            return
        try:
            module, mine = self._module, self._pid == os.getpid()
            self._pid, self._module = None, None
        finally:
            self._lock.release()
        if module is not None and mine:
            with contextlib.suppress(Exception):  # a library that misbehaves at exit must not raise there
                getattr(module, self._shutdown_name)()


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_sessions = {"pynvml": LibrarySession.nvml(), "amdsmi": LibrarySession.amdsmi()}


@atexit.register
def _shutdown_all() -> None:
    for session in list(_sessions.values()):
        session.close()


def _forget_in_child() -> None:
    """A forked child starts without the parent's handle (NVML handles must not cross fork) and with
    fresh locks (one held by another parent thread at the fork would never be released here)."""
    for session in _sessions.values():
        session._lock = threading.Lock()
        session._pid, session._module = None, None


os.register_at_fork(after_in_child=_forget_in_child)


def nvml_session() -> LibrarySession:
    """The process's NVML session (discovery, telemetry and energy counters all use this one)."""
    return _sessions["pynvml"]


def amdsmi_session() -> LibrarySession:
    """The process's amdsmi session."""
    return _sessions["amdsmi"]


@contextlib.contextmanager
def using_library(module: Any, import_name: str = "pynvml") -> Iterator[LibrarySession]:
    """Make ``module`` (a recorded fake) the process's ``import_name`` library for a block, then
    shut it down and restore the real one: the seam tests use to count initialisations."""
    previous = _sessions[import_name]
    session = (LibrarySession.nvml if import_name == "pynvml" else LibrarySession.amdsmi)(module)
    _sessions[import_name] = session
    try:
        yield session
    finally:
        _sessions[import_name] = previous
        session.close()
