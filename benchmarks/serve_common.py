"""Helpers shared by the serve benchmarks: a server subprocess on loopback, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


@contextlib.contextmanager
def server(repository: pathlib.Path, *extra: str, log: pathlib.Path | None = None) -> Iterator[dict[str, Any]]:
    """``aivmm serve`` on 127.0.0.1 with free ports; yields the ready event; stops it by pid."""
    cmd = [
        sys.executable,
        "-m",
        "aivmm",
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "-1",
        *extra,
    ]
    err = open(log or os.devnull, "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
    try:
        yield _ready(proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        err.close()


def _ready(proc: subprocess.Popen[bytes], timeout_s: float = 300.0) -> dict[str, Any]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    buf = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if sel.select(timeout=0.2):
            buf += os.read(proc.stdout.fileno(), 4096)
            for line in buf.splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "ready":
                        return event
    raise RuntimeError("server not ready in time")


def repository_with(
    tmp: pathlib.Path, name: str, model: pathlib.Path, config: dict[str, Any] | None = None
) -> pathlib.Path:
    """A one-model Triton-style repository holding ``model`` (hard link, else a copy: the server
    refuses symlinks that leave the repository, by design)."""
    d = tmp / name / "1"
    d.mkdir(parents=True, exist_ok=True)
    target = d / "model.onnx"
    if not target.exists():
        try:
            os.link(model, target)
        except OSError:
            shutil.copyfile(model, target)
    if config is not None:
        (tmp / name / "config.json").write_text(json.dumps(config))
    return tmp
