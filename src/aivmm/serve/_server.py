"""Assemble and run the server: HTTP (uvicorn) and gRPC (grpc.aio) on one event loop, metrics on
its own port, SIGTERM/SIGINT drain in-flight work before exit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from aivmm.errors import ConfigError
from aivmm.serve._dataplane import DataPlane
from aivmm.serve._host import Host, Limits
from aivmm.serve._repository import Repository

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    repository: str | None = None  # None: the built-in zoo
    zoo_size: str = "tiny"  # the zoo's model size when there is no repository
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC
    metrics_port: int | None = 8002  # None: metrics only at /metrics on the HTTP port
    token: str | None = None
    load: tuple[str, ...] | None = None  # None: every model of the repository at start
    limits: Limits = dataclasses.field(default_factory=Limits)
    constraints: Any = None  # default constraints for models whose config has none
    http_concurrency: int = 2048  # open connections+requests before uvicorn answers 503
    measure: bool = True  # False: plan from the cost model only (faster start, less exact placement)
    # While serve() runs: the event loop forwards every generated token and competes for the GIL
    # with each LLM's scheduler thread; at CPython's default 5 ms the loop waits for whole
    # intervals. 0.5 ms measured 1.8x the 16-stream tokens/s (benchmarks/serve_llm.py). None: leave it.
    gil_switch_interval_s: float | None = 0.0005


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol is explicit, and without it every response's second write waits for a delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Server:
    """The running server. ``run()`` serves until ``stop()`` or a signal, then drains."""

    def __init__(self, options: ServeOptions, host: Host) -> None:
        if not is_loopback(options.host) and not options.token:
            log.warning(
                "listening on %s without --token: anyone who can reach it can load and unload models", options.host
            )
        self.options = options
        from aivmm.telemetry import ServerMetrics, device_rows

        self._device_rows = device_rows
        self.repository = Repository(options.repository, zoo_size=options.zoo_size)
        self.metrics = ServerMetrics(status=self._status_for_metrics)
        self.plane = DataPlane(
            host,
            self.repository,
            limits=options.limits,
            observer=self.metrics,
            default_constraints=options.constraints,
            measure=options.measure,
        )
        from aivmm.serve._textgen import TextGen

        self.textgen = TextGen(self.plane, observer=self.metrics)
        engine = getattr(host, "engine", None)  # a local VMM; a cluster VMM times requests on its nodes
        if engine is not None and hasattr(engine, "request_observers"):
            engine.request_observers.append(self._runtime_timing)
        self.ports: dict[str, int] = {}
        self._stop: asyncio.Event | None = None

    def _runtime_timing(self, model: str, queue_s: float, compute_s: float) -> None:
        # The data plane deploys "<model>:<version>:<generation>"; a fast-start upgrade appends "@<config>".
        name = model.split("@", 1)[0].split(":", 1)[0]
        self.metrics.stage(name, "queue", queue_s)
        self.metrics.stage(name, "compute", compute_s)

    def _status_for_metrics(self) -> dict[str, Any]:
        return self._with_llm(self.plane.status())

    def _with_llm(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Each LLM version's row gains an ``llm`` section: batch, queue, KV use, token figures."""
        from aivmm.serve._textgen import is_llm

        for row in doc.get("models", []):
            model = self.plane._models.get(row.get("name", ""))
            entry = model.versions.get(int(row["version"])) if model and str(row.get("version", "")).isdigit() else None
            if entry is not None and is_llm(entry.handle):
                row["llm"] = self.textgen.status(entry)
        return doc

    def status(self) -> dict[str, Any]:
        doc = self._with_llm(self.plane.status())
        doc["devices"] = self._device_rows(doc, self.metrics.readings())
        return doc

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self, on_ready: Callable[[dict[str, int]], None] | None = None) -> None:
        import uvicorn

        from aivmm.serve._grpc import create_server
        from aivmm.serve._http import HttpApp

        opts = self.options
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)

        app = HttpApp(
            self.plane, token=opts.token, metrics=self.metrics.render, status=self.status, textgen=self.textgen
        )
        sock = _bind(opts.host, opts.http_port)
        self.ports["http"] = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            loop="none",
            limit_concurrency=opts.http_concurrency,
            timeout_graceful_shutdown=int(opts.limits.drain_timeout_s),
            h11_max_incomplete_event_size=opts.limits.max_header_bytes,
            timeout_keep_alive=30,
        )
        http = _Uvicorn(config)
        http_task = asyncio.create_task(http.serve(sockets=[sock]), name="aivmm-http")

        grpc_server = None
        if opts.grpc_port is not None:
            grpc_server, port = create_server(
                self.plane,
                f"{_grpc_host(opts.host)}:{opts.grpc_port}",
                token=opts.token,
                max_message_bytes=opts.limits.max_body_bytes,
            )
            self.ports["grpc"] = port
            await grpc_server.start()

        metrics_httpd = None
        if opts.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                metrics_httpd, _ = start_http_server(opts.metrics_port, addr=opts.host, registry=self.metrics.registry)
            except OSError as exc:
                raise ConfigError(f"cannot listen for metrics on {opts.host}:{opts.metrics_port}: {exc}") from exc
            self.ports["metrics"] = metrics_httpd.server_port

        started_by = time.monotonic() + 30.0
        while not http.started and not http_task.done():
            if time.monotonic() > started_by:
                raise ConfigError("the HTTP server did not start within 30 s")
            await asyncio.sleep(0.005)
        if http_task.done():
            http_task.result()  # raises what made uvicorn fail
        try:
            await self._startup_loads()
            if on_ready is not None:
                on_ready(dict(self.ports))
            await self._stop.wait()
        finally:
            log.info("shutting down: draining in-flight requests")
            self.plane._shutting_down = True
            http.should_exit = True
            if grpc_server is not None:
                await grpc_server.stop(opts.limits.drain_timeout_s)
            with contextlib.suppress(Exception):
                await http_task
            await self.plane.shutdown()
            if metrics_httpd is not None:
                metrics_httpd.shutdown()
                metrics_httpd.server_close()

    async def _startup_loads(self) -> None:
        names = list(self.options.load) if self.options.load is not None else self.repository.names()
        self.plane.starting = True
        try:
            for name in names:  # one at a time: the planner's measurements must not disturb each other
                try:
                    await self.plane.load(name)
                except Exception as exc:
                    if self.options.load is not None:
                        raise  # a model asked for by name must load
                    # Serving the rest beats refusing to start; the index shows this one's reason.
                    log.error("model %r not loaded: %s", name, exc)
        finally:
            self.plane.starting = False


class _Uvicorn:
    """uvicorn.Server without its own signal handling: ours drains gRPC and the models as well."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

            def install_signal_handlers(self) -> None:
                return

        return Quiet(config)


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(options: ServeOptions, host: Host, *, announce: bool = True) -> int:
    """Run until SIGTERM/SIGINT. With ``announce``, prints one JSON line when ready (ports)."""

    def ready(ports: dict[str, int]) -> None:
        if announce:
            print(
                json.dumps({"event": "ready", **{f"{k}_port": v for k, v in ports.items()}, "time": time.time()}),
                flush=True,
            )
        where = ", ".join(f"{k} {options.host}:{v}" for k, v in ports.items())
        print(f"aivmm serve: ready ({where})", file=sys.stderr, flush=True)

    server = Server(options, host)
    previous = sys.getswitchinterval()
    if options.gil_switch_interval_s is not None:
        sys.setswitchinterval(options.gil_switch_interval_s)
    try:
        asyncio.run(server.run(ready))
    finally:
        sys.setswitchinterval(previous)
    return 0
