"""Real ``ray start`` nodes on loopback IPs, as a user starts them, each stopped by its pids.

``ray start --block`` keeps every process of the node (GCS, raylet, agents, workers) among its
descendants, so the node's own processes are known exactly; ``ray stop`` is never used (it kills
every Ray process of the machine, other people's included). Ports are chosen free at run time,
outside Ray's worker port range, and every node has its own ``--temp-dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

START_TIMEOUT_S = 90.0
# Ray's worker ports: a private range per node, so two nodes (or two sessions) never collide.
_WORKER_PORTS = 24


def free_port(host: str) -> int:
    """A port free on ``host`` now; the ephemeral range is outside Ray's default worker ports."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _free_range(host: str, width: int) -> tuple[int, int]:
    """``width`` consecutive ports that are free on ``host`` now (bounded search)."""
    for _ in range(50):
        start = free_port(host)
        if start + width >= 65535:
            continue
        ok = True
        for port in range(start, start + width):
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + width - 1
    raise RuntimeError(f"no {width} consecutive free ports on {host}")


@dataclasses.dataclass
class RayNode:
    """One ``ray start --block`` process and what it started."""

    ip: str
    temp_dir: pathlib.Path
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    gcs_port: int | None = None  # the head's

    @property
    def address(self) -> str:
        assert self.gcs_port is not None, "not a head node"
        return f"{self.ip}:{self.gcs_port}"

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until ``ray start`` says the node runs; RuntimeError with its log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"ray start on {self.ip} failed (exit {self.proc.poll()}): {self.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)

    def processes(self) -> list[Any]:
        """This node's processes (the ``ray start`` process last), by the process tree."""
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            return [*root.children(recursive=True), root]
        return []

    def pid_of(self, name: str) -> int:
        """The pid of this node's process called ``name`` (``raylet``, ``gcs_server``)."""
        for proc in self.processes():
            with contextlib.suppress(Exception):
                if proc.name() == name:
                    return int(proc.pid)
        raise LookupError(f"no {name} process under ray start pid {self.proc.pid}: {self.log.read_text()[-2000:]}")

    def node_id(self) -> str:
        """The Ray node id, read from the raylet's command line."""
        import psutil

        cmd = psutil.Process(self.pid_of("raylet")).cmdline()
        for part in cmd:
            if part.startswith("--node_id="):
                return part.split("=", 1)[1]
        raise LookupError(f"raylet command line has no --node_id: {cmd}")

    def stop(self, timeout_s: float = 3.0) -> list[int]:
        """SIGTERM every process of the node, SIGKILL what is left after ``timeout_s``, then end the
        ``ray start`` process itself; returns the pids that needed SIGKILL."""
        import psutil

        procs = self.processes()[:-1]  # the ray start process last: it reaps the others
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        alive = _wait_gone(procs, timeout_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _wait_gone(alive, 5.0)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return [p.pid for p in alive]


def _wait_gone(procs: list[Any], timeout_s: float) -> list[Any]:
    """The processes still running after ``timeout_s`` (a zombie counts as gone: it only awaits its reaper)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _ray_start(
    args: list[str], ip: str, temp_dir: pathlib.Path, env: Mapping[str, str] | None, wait: bool = True
) -> RayNode:
    temp_dir.mkdir(parents=True, exist_ok=True)
    low, high = _free_range(ip, _WORKER_PORTS)
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        ip,
        "--temp-dir",
        str(temp_dir),
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(80 << 20),
        "--dashboard-agent-listen-port",
        str(free_port(ip)),
        "--metrics-export-port",
        str(free_port(ip)),
        "--min-worker-port",
        str(low),
        "--max-worker-port",
        str(high),
        *args,
    ]
    log = temp_dir / "ray-start.log"
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    node = RayNode(ip, temp_dir, proc, log)
    if wait:
        node.wait_started()
    return node


def start_head(
    ip: str,
    temp_dir: pathlib.Path,
    *,
    env: Mapping[str, str] | None = None,
    system_config: Mapping[str, Any] | None = None,
    resources: Mapping[str, float] | None = None,
    wait: bool = True,
) -> RayNode:
    port = free_port(ip)
    args = [
        "--head",
        "--port",
        str(port),
        "--ray-client-server-port",
        str(free_port(ip)),
        "--include-dashboard",
        "false",
    ]
    if system_config:
        args += ["--system-config", json.dumps(dict(system_config))]
    if resources:
        args += ["--resources", json.dumps(dict(resources))]
    node = _ray_start(args, ip, temp_dir, env, wait=False)
    node.gcs_port = port
    if wait:
        node.wait_started()
    return node


def start_worker(
    head: RayNode,
    ip: str,
    temp_dir: pathlib.Path,
    *,
    env: Mapping[str, str] | None = None,
    resources: Mapping[str, float] | None = None,
    wait: bool = True,
) -> RayNode:
    """A worker joining ``head`` (which may still be starting: ``ray start --address`` waits for its GCS)."""
    args = ["--address", head.address]
    if resources:
        args += ["--resources", json.dumps(dict(resources))]
    return _ray_start(args, ip, temp_dir, env, wait=wait)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
