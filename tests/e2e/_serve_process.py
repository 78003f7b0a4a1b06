"""Start ``aivmm serve`` in a subprocess on 127.0.0.1 with free ports; stop it by its pid."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

STARTUP_TIMEOUT_S = 90.0


class RunningServer:
    def __init__(self, proc: subprocess.Popen[bytes], ports: dict[str, int], log: pathlib.Path) -> None:
        self.proc = proc
        self.ports = ports
        self.log = log

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports['http_port']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_port']}"

    @property
    def metrics(self) -> str:
        return f"127.0.0.1:{self.ports['metrics_port']}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the drain, SIGKILL only if it hangs; returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError(f"server did not exit within {timeout} s of SIGTERM") from None
        return self.proc.returncode


@contextlib.contextmanager
def running_server(args: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    cmd = [sys.executable, "-m", "aivmm", "serve", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
    server = None
    try:
        ports = _wait_ready(proc, log)
        server = RunningServer(proc, ports, log)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(proc: subprocess.Popen[bytes], log: pathlib.Path) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    buf = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if not sel.select(timeout=0.2):
            continue
        chunk = os.read(proc.stdout.fileno(), 4096)
        buf += chunk
        for line in buf.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    return event
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    raise AssertionError(f"server not ready within {STARTUP_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")
