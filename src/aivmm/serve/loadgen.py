"""A load generator for aivmm bench and the benchmarks: closed-loop concurrency and Poisson open loop.

Targets are factories of per-thread callables that run one request (raising on failure), so the
same loop drives an in-process model, an HTTP server (binary tensors over keep-alive connections)
or a gRPC server. Latency in the open loop is measured from each request's *scheduled* arrival,
so a stalled server cannot hide its queueing (no coordinated omission). Every loop is bounded by
its duration and by a request cap.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aivmm.errors import ConfigError, ServingError

Call = Callable[[], None]
Factory = Callable[[], Call]
MAX_REQUESTS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Result:
    """One load level: latencies of successful requests (seconds), errors and the wall time."""

    label: str
    mode: str  # "closed" | "open"
    level: float  # concurrency or offered rate
    latencies: tuple[float, ...]
    errors: int
    elapsed_s: float
    error_samples: tuple[str, ...] = ()

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "mode": self.mode,
            "level": self.level,
            "requests": len(self.latencies),
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 4),
            "throughput": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50) * 1e3, 4),
            "p90_ms": round(self.percentile(90) * 1e3, 4),
            "p99_ms": round(self.percentile(99) * 1e3, 4),
            "error_samples": list(self.error_samples),
        }


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.samples: list[str] = []

    def ok(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(f"{type(exc).__name__}: {exc}"[:300])


def closed_loop(
    factory: Factory,
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 0.5,
    label: str = "",
    progress: Callable[[float], None] | None = None,
) -> Result:
    """``concurrency`` workers, each sending its next request as soon as the last one is answered."""
    if concurrency < 1 or duration_s <= 0:
        raise ConfigError("concurrency must be >= 1 and duration > 0")
    calls = [factory() for _ in range(concurrency)]
    tally = _Tally()
    start_gate = threading.Barrier(concurrency + 1)
    t_measure = [0.0, 0.0]

    def worker(call: Call) -> None:
        start_gate.wait()
        n = 0
        while n < MAX_REQUESTS:
            t0 = time.perf_counter()
            if t0 >= t_measure[1]:
                return
            try:
                call()
            except Exception as exc:
                if t0 >= t_measure[0]:
                    tally.fail(exc)
                continue
            finally:
                n += 1
            if t0 >= t_measure[0]:
                tally.ok(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    now = time.perf_counter()
    t_measure[0] = now + warmup_s
    t_measure[1] = now + warmup_s + duration_s
    start_gate.wait()
    _wait(t_measure[1], progress, now)
    for t in threads:
        t.join(max(30.0, duration_s))
    return Result(label, "closed", concurrency, tuple(tally.latencies), tally.errors, duration_s, tuple(tally.samples))


def open_loop(
    factory: Factory,
    rate: float,
    duration_s: float,
    *,
    max_outstanding: int = 256,
    seed: int = 0,
    label: str = "",
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Poisson arrivals at ``rate``/s; each latency counts from the request's scheduled arrival."""
    if rate <= 0 or duration_s <= 0:
        raise ConfigError("rate and duration must be positive")
    rng = np.random.default_rng(seed)
    n = min(MAX_REQUESTS, int(rate * duration_s * 1.2) + 16)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    arrivals = arrivals[arrivals < duration_s]
    tally = _Tally()
    local = threading.local()

    def run(scheduled: float) -> None:
        call = getattr(local, "call", None)
        if call is None:
            call = local.call = factory()
        try:
            call()
        except Exception as exc:
            tally.fail(exc)
            return
        tally.ok(time.perf_counter() - scheduled)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_outstanding) as pool:
        for offset in arrivals:
            at = start + float(offset)
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run, at)
            if progress is not None:
                progress(min(1.0, float(offset) / duration_s))
    elapsed = max(duration_s, time.perf_counter() - start)
    return Result(label, "open", rate, tuple(tally.latencies), tally.errors, elapsed, tuple(tally.samples))


def _wait(until: float, progress: Callable[[float], None] | None, start: float) -> None:
    while True:
        now = time.perf_counter()
        if now >= until:
            break
        if progress is not None:
            progress((now - start) / (until - start))
        time.sleep(min(0.1, until - now))
    if progress is not None:
        progress(1.0)


# -- targets --------------------------------------------------------------------------------------
def in_process(model: Any, feeds: Mapping[str, np.ndarray]) -> Factory:
    """Calls ``model.execute(feeds)`` (a DeployedModel or anything with that method)."""

    def factory() -> Call:
        return lambda: model.execute(dict(feeds))

    return factory


def http_target(
    url: str, model: str, feeds: Mapping[str, np.ndarray], *, binary: bool = True, timeout_s: float = 60.0
) -> Factory:
    """KServe v2 REST with Triton binary tensors (or JSON), one keep-alive connection per worker."""
    from aivmm.serve import _tensors as t

    parts = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise ConfigError(f"not an http URL: {url!r}")
    host, port = parts.hostname, parts.port or 80
    inputs, blobs = [], []
    for name, arr in feeds.items():
        entry: dict[str, Any] = {"name": name, "datatype": t.datatype_of(arr).kserve, "shape": list(arr.shape)}
        if binary:
            blob = bytes(t.to_bytes(arr))
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.to_json(arr)
        inputs.append(entry)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary}}).encode()
    body = head + b"".join(blobs)
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(head))
    return _post_factory(
        host,
        port,
        f"/v2/models/{model}/infer",
        body,
        headers,
        timeout_s,
        lambda data, resp: _decode_outputs(data, resp.getheader("Inference-Header-Content-Length")),
    )


def _post_factory(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    check: Callable[[bytes, http.client.HTTPResponse], object] | None = None,
) -> Factory:
    """Each client gets a keep-alive connection POSTing ``body``; a broken one is replaced, non-200 raises."""

    def factory() -> Call:
        conn = _connection(host, port, timeout_s)

        def call() -> None:
            nonlocal conn
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = _connection(host, port, timeout_s)
                raise
            if resp.status != 200:
                raise ServingError(f"HTTP {resp.status}: {data[:200]!r}")
            if check is not None:
                check(data, resp)

        return call

    return factory


def _connection(host: str, port: int, timeout_s: float) -> http.client.HTTPConnection:
    """A connected keep-alive connection with Nagle off (small requests must not wait for ACKs)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _decode_outputs(data: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Outputs as numpy, as a client would use them (so the comparison with in-process is fair)."""
    from aivmm.dtypes import DType

    n = int(header_length) if header_length else len(data)
    head = json.loads(data[:n])
    out, pos = {}, n
    for o in head["outputs"]:
        dtype = DType.from_kserve(o["datatype"])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[o["name"]] = np.frombuffer(
                data, dtype.to_numpy(), offset=pos, count=size // max(1, dtype.itemsize)
            ).reshape(o["shape"])
            pos += size
        else:
            out[o["name"]] = np.asarray(o["data"], dtype.to_numpy()).reshape(o["shape"])
    return out


def grpc_target(url: str, model: str, feeds: Mapping[str, np.ndarray]) -> Factory:
    """KServe v2 gRPC through the standard Triton client (tritonclient[grpc])."""
    try:
        import tritonclient.grpc as tg
    except ImportError:
        raise ConfigError("gRPC targets need the Triton client: pip install 'tritonclient[grpc]'") from None
    from aivmm.serve import _tensors as t

    address = url.split("//", 1)[-1]

    def factory() -> Call:
        client = tg.InferenceServerClient(address)
        inputs = []
        for name, arr in feeds.items():
            i = tg.InferInput(name, list(arr.shape), t.datatype_of(arr).kserve)
            i.set_data_from_numpy(arr)
            inputs.append(i)

        def call() -> None:
            client.infer(model, inputs)

        return call

    return factory


def raw_http_target(
    url: str, path: str, body: bytes, headers: Mapping[str, str] | None = None, *, timeout_s: float = 60.0
) -> Factory:
    """POST a fixed body to any HTTP endpoint (another server, for comparisons); 200 means success."""
    parts = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    if not parts.hostname:
        raise ConfigError(f"not an http URL: {url!r}")
    host, port = parts.hostname, parts.port or 80
    return _post_factory(host, port, path, body, dict(headers or {}), timeout_s)
