"""Isolation: a model in its own worker process, so unloading returns every byte it held.

The parent keeps a :class:`WorkerSession` proxy that speaks the Session interface; the worker
(a ``spawn``-ed process: no inherited CUDA context or locks) loads the model through the backend
registry and answers run requests over a pipe. Arrays travel pickled with protocol 5 (one copy
each way). A worker that dies mid-request is restarted; the request is retried once when it is
idempotent and otherwise failed with an error that says the worker crashed - never lost.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aivmm.backends import Config, LoadReport, Session
from aivmm.devices import Device
from aivmm.errors import ExecutionError, ModelLoadError
from aivmm.models import ModelSpec

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0  # spawning imports numpy and the runtime; a loaded CI box is slow


def _read_only(mapping: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(mapping)


def _dumps(obj: Any) -> bytes:
    # The values (ModelSpec, Device, Config) hold read-only mapping proxies; pickle them as dicts
    # through a private dispatch table rather than registering a process-wide copyreg reducer.
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=5)
    table = copyreg.dispatch_table.copy()
    table[MappingProxyType] = lambda m: (_read_only, (dict(m),))
    pickler.dispatch_table = table
    pickler.dump(obj)
    return buf.getvalue()


def _worker_main(conn: multiprocessing.connection.Connection, payload: bytes) -> None:
    from aivmm.backends import registry

    spec, device, config = pickle.loads(payload)
    try:
        session = registry.get(config.backend).load(spec, device, config)
    except BaseException as exc:
        conn.send_bytes(_dumps(("err", _portable(exc))))
        return
    conn.send_bytes(_dumps(("ready", session.report)))
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if msg[0] == "close":
            break
        _, feeds, output = msg
        try:
            reply: tuple[Any, ...] = ("ok", session.run(feeds, output="numpy" if output == "native" else output))
        except BaseException as exc:
            reply = ("err", _portable(exc))
        conn.send_bytes(_dumps(reply))
    session.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else an ExecutionError carrying its text."""
    try:
        pickle.loads(_dumps(exc))
        return exc
    except Exception:
        return ExecutionError(f"{type(exc).__name__}: {exc}")


class WorkerCrashedError(ExecutionError):
    """Internal marker: the worker process died while serving a request."""


class WorkerSession(Session):
    """A Session whose model runs in a child process."""

    def __init__(self, model: ModelSpec, device: Device, config: Config) -> None:
        super().__init__(model, device, config)
        self._ctx = multiprocessing.get_context("spawn")
        self._call_lock = threading.Lock()  # one request at a time on the pipe
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.restarts = 0
        self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        payload = _dumps((self.model, self.device, self.config))
        proc = self._ctx.Process(
            target=_worker_main, args=(child, payload), daemon=True, name=f"aivmm-worker-{self.model.name}"
        )
        start = time.perf_counter()
        proc.start()
        child.close()
        if not parent.poll(_START_TIMEOUT_S):
            proc.kill()
            proc.join(5)
            raise ModelLoadError(f"worker for {self.model.name!r} did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            status, value = pickle.loads(parent.recv_bytes())
        except (EOFError, OSError) as exc:
            proc.join(5)
            raise ModelLoadError(
                f"worker for {self.model.name!r} died while loading (exit code {proc.exitcode})"
            ) from exc
        if status == "err":
            proc.join(5)
            raise value
        self._process, self._conn = proc, parent
        report: LoadReport = value
        self.report = LoadReport(
            time.perf_counter() - start,
            report.device_memory_bytes,
            report.fallback_nodes,
            (*report.notes, f"isolated in worker process {proc.pid}"),
        )

    def _call(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        assert self._conn is not None
        try:
            self._conn.send_bytes(_dumps(("run", dict(feeds), output)))
            status, value = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            code = None
            if self._process is not None:
                self._process.join(timeout=2.0)  # reap it, so the exit code (-9 for SIGKILL) is known
                code = self._process.exitcode
            raise WorkerCrashedError(
                f"worker process {self.pid} of {self.model.name!r} died (exit code {code})"
            ) from exc
        if status == "err":
            raise value
        return value

    def run_with_retry(self, feeds: Mapping[str, Any], output: str, *, idempotent: bool) -> dict[str, Any]:
        with self._call_lock:
            if self._closed:
                return self.run(feeds, output=output)  # raises ModelClosedError
            try:
                return self._call(feeds, output)
            except WorkerCrashedError as exc:
                self._reap()
                self.restarts += 1
                log.warning("%s; restarting it", exc)
                self._start()
                if not idempotent:
                    raise ExecutionError(
                        f"{exc}; the worker was restarted but the request is not idempotent, so it was not"
                        " retried: send it again if that is safe"
                    ) from exc
                try:
                    return self._call(feeds, output)
                except WorkerCrashedError as exc2:
                    self._reap()
                    self._start()
                    raise ExecutionError(f"{exc2} again on retry; the request failed twice") from exc2

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        return self.run_with_retry(feeds, output, idempotent=True)

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=2.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5.0)
        self._conn = None
        self._process = None

    def _close(self) -> None:
        with self._call_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send_bytes(_dumps(("close",)))
            self._reap()


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process from /proc (Linux); 0 where unavailable."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
