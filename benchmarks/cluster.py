"""aivmm on a real ``ray start`` cluster: routing overhead per request, throughput, and node loss.

    python benchmarks/cluster.py                          # both parts, figures as a Markdown table
    python benchmarks/cluster.py --calls 1000 --json out.json

The cluster is started as users start one: ``ray start --head --node-ip-address 127.0.0.2`` and a
worker ``ray start --address 127.0.0.2:P --node-ip-address 127.0.0.3`` (tests/cluster/_raystart.py,
free ports, private temp dirs, each node stopped by its pids). Both nodes share this machine's cores.

Latency (batch 1, median of ``--calls`` sequential calls, all on this machine's CPU, ONNX Runtime):
  ``raw``      onnxruntime.InferenceSession.run in this process
  ``direct``   aivmm.VMM deploy + execute in this process (the façade and engine, no Ray)
  ``head``     ClusterVMM, the copy on the head node's agent (another process), over its channel
  ``worker``   ClusterVMM, the copy on the worker node's agent (another node IP)
  ``actor``    the same worker agent called as a Ray actor method (what the channel replaces)
  ``in agent`` the worker agent's own median for the same model, timed inside the agent process
Routing overhead = ``worker`` − ``in agent``: the same model on the same node, served directly
there or routed from this process. Over HTTP (``--http-s``): ``aivmm serve`` against
``aivmm serve --ray`` with the same repository and one client (p50). Throughput: ``--concurrency`` requests in flight.

Node loss (``--loss-s``): two models under closed-loop traffic from ``--clients`` threads, one with
a copy on each node, one only on the worker; the worker's raylet is SIGKILLed; reported: requests
answered, failed (lost), the longest request around the loss, and the times from the kill to the
registry noticing it, and per model the longest time without a successful answer (the outage).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))

FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def _latency_ms(call: Any, feeds: dict[str, np.ndarray], n: int) -> float:
    for _ in range(max(20, n // 10)):
        call(feeds)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _throughput(model: Any, feeds: dict[str, np.ndarray], concurrency: int, duration: float) -> float:
    import asyncio

    async def run() -> int:
        done = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await model.execute_async(feeds)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    t0 = time.perf_counter()
    done = asyncio.run(run())
    return done / (time.perf_counter() - t0)


def _models(workdir: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    from aivmm.models import zoo
    from conftest import affine_model

    return {
        "affine (one op)": (affine_model(workdir / "affine.onnx"), {"x": np.ones((1, 4), np.float32)}),
        "resnet50 tiny": (zoo.build("resnet50"), zoo.sample_inputs("resnet50", batch=1)),
    }


def _latency_rows(cvmm: Any, models: dict[str, Any], args: argparse.Namespace, labels: dict[str, str]) -> list[dict]:
    import onnxruntime as ort
    import ray

    from aivmm.vmm import VMM

    rows = []
    for label, (path, feeds) in models.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        row: dict[str, Any] = {"model": label}
        row["raw_ms"] = _latency_ms(lambda f, s=sess: s.run(None, f), feeds, args.calls)
        with VMM() as vmm:
            m = vmm.deploy(str(path), device="cpu:0", backend="onnxruntime", measure=False)
            row["direct_ms"] = _latency_ms(m.execute, feeds, args.calls)
            row["direct_rps"] = _throughput(m, feeds, args.concurrency, args.duration)
        for where in ("head", "worker"):
            name = f"bench-{where}"
            m = cvmm.deploy(
                str(path), name=name, backend="onnxruntime", measure=False, device=f"{labels[where]}/cpu:0", strict=True
            )
            row[f"{where}_ms"] = _latency_ms(m.execute, feeds, args.calls)
            if where == "worker":
                row["worker_rps"] = _throughput(m, feeds, args.concurrency, args.duration)
                node_id = next(n["node_id"] for n in cvmm.nodes() if n["node"] == labels["worker"])
                agent = ray.get_actor(f"aivmm-agent-{node_id}", namespace="aivmm")
                row["actor_ms"] = _latency_ms(
                    lambda f, a=agent, n=name: ray.get(a.infer.remote(n, "cpu:0", f)), feeds, args.calls
                )
                row["in_agent_ms"] = ray.get(agent.time_local.remote(name, "cpu:0", feeds, args.calls))
            cvmm.unload(name)
        row["overhead_ms"] = row["worker_ms"] - row["in_agent_ms"]
        rows.append(row)
        print(
            f"{label}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
            file=sys.stderr,
        )
    return rows


def _http_rows(address: str, models: dict[str, Any], duration: float, root: Path) -> list[dict[str, Any]]:
    """``aivmm serve`` against ``aivmm serve --ray`` (same repository, same load generator), one
    client: p50 per request over HTTP, A-B-A so drift shows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serve_common
    from aivmm.serve import loadgen as lg

    rows = []
    for label, (path, feeds) in models.items():
        name = "m" + str(len(rows))
        repo = serve_common.repository_with(root / f"repo-{name}", name, path, {"backend": "onnxruntime"})
        p50: dict[str, list[float]] = {"direct": [], "ray": []}
        for mode in ("direct", "ray", "direct"):
            extra = ["--no-measure", "--grpc-port", "-1"] + (["--ray", address] if mode == "ray" else [])
            with serve_common.server(repo, *extra, log=root / f"serve-{name}-{mode}.log") as ready:
                url = f"127.0.0.1:{ready['http_port']}"
                r = lg.closed_loop(lg.http_target(url, name, feeds), 1, duration, warmup_s=1.0, label=mode)
                p50[mode].append(r.percentile(50) * 1e3)
        row = {
            "model": label,
            "http_direct_p50_ms": statistics.mean(p50["direct"]),
            "http_ray_p50_ms": p50["ray"][0],
            "direct_runs": p50["direct"],
        }
        row["http_overhead_ms"] = row["http_ray_p50_ms"] - row["http_direct_p50_ms"]
        rows.append(row)
        print(f"http {label}: {json.dumps(row)}", file=sys.stderr)
    return rows


def _node_loss(cvmm: Any, worker: Any, labels: dict[str, str], path: Path, clients: int, loss_s: float) -> dict:
    """Kill the worker's raylet under traffic; every request's outcome and timing is recorded."""
    spread = cvmm.deploy(str(path), name="loss-spread", replicas=2, measure=False)
    solo = cvmm.deploy(str(path), name="loss-solo", device=f"{labels['worker']}/cpu:0", measure=False)
    assert {t.node for t in spread.router.targets()} == set(labels.values()), spread.stats()
    x = {"x": np.ones((1, 4), np.float32)}
    stop = threading.Event()
    log: list[tuple[str, float, float, bool]] = []  # model, start, end, ok

    def traffic(model: Any) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                ok = bool(np.array_equal(model.execute(x)["y"], 3 * np.ones((1, 4), np.float32)))
            except Exception as exc:  # a defined error: counted as a failed (lost) request
                print(f"{model.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                ok = False
            log.append((model.name, t0, time.monotonic(), ok))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in (spread, solo) for _ in range(clients // 2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    agent_pid = next((p.pid for p in worker.processes() if "NodeAgent" in " ".join(p.cmdline())), -1)
    killed = time.monotonic()
    os.kill(worker.pid_of("raylet"), signal.SIGKILL)
    noticed = None
    while time.monotonic() - killed < loss_s:
        if noticed is None and labels["worker"] not in {n["node"] for n in cvmm.nodes()}:
            noticed = time.monotonic() - killed
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(120)
    import psutil

    after = [e for e in log if e[1] >= killed or e[2] >= killed]

    def outage(name: str) -> float:
        """The longest time without a successful answer for ``name`` from the kill on."""
        ends = sorted(e[2] for e in log if e[0] == name and e[3] and e[2] >= killed)
        return max((b - a for a, b in zip([killed, *ends], ends, strict=False)), default=float("nan"))

    out = {
        "answered": sum(e[3] for e in log),
        "failed": sum(not e[3] for e in log),
        "answered_after_kill": sum(e[3] for e in after),
        "longest_request_ms_around_kill": round(max((e[2] - e[1] for e in after), default=0) * 1e3, 1),
        "registry_noticed_s": None if noticed is None else round(noticed, 2),
        "longest_outage_s": {
            "loss-spread": round(outage("loss-spread"), 3),
            "loss-solo": round(outage("loss-solo"), 3),
        },
        "solo_now_on": [t.device for t in solo.router.targets()],
        "spread_now_on": [t.device for t in spread.router.targets()],
        "retries": spread.retries + solo.retries,
        "worker_agent_alive_after_kill": psutil.pid_exists(agent_pid),
    }
    cvmm.unload("loss-spread")
    cvmm.unload("loss-solo")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500, help="sequential calls per latency figure")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per throughput figure")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight for throughput")
    ap.add_argument("--clients", type=int, default=4, help="threads of traffic during the node loss")
    ap.add_argument("--loss-s", type=float, default=8.0, help="seconds of traffic after the kill")
    ap.add_argument(
        "--default-health-checks",
        action="store_true",
        help="keep Ray's default node health checks (else 300 ms x 3, as the tests use)",
    )
    ap.add_argument("--no-latency", action="store_true", help="only the node-loss part")
    ap.add_argument("--no-http", action="store_true", help="skip aivmm serve vs aivmm serve --ray")
    ap.add_argument("--http-s", type=float, default=5.0, help="seconds per HTTP latency figure")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    # Explicit, so a token another program left in ~/.ray/auth_token does not switch the nodes'
    # authentication on behind this benchmark's back (Ray enables it when it finds one).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import onnxruntime as ort
    import ray
    from _raystart import start_head, start_worker

    from aivmm.cluster import ClusterVMM

    root = Path(tempfile.mkdtemp(prefix="aivmm-bench-ray-"))
    models = _models(root)
    head = start_head(
        "127.0.0.2",
        root / "head",
        system_config=None if args.default_health_checks else FAST_FAILURE_DETECTION,
        env={"AIVMM_CACHE_DIR": str(root / "cache-head")},
    )
    nodes = [head]
    try:
        nodes.append(start_worker(head, "127.0.0.3", root / "w1", env={"AIVMM_CACHE_DIR": str(root / "cache-w1")}))
        with ClusterVMM(head.address) as cvmm:
            labels = {("head" if n["endpoint"][0] == "127.0.0.2" else "worker"): n["node"] for n in cvmm.nodes()}
            rows = [] if args.no_latency else _latency_rows(cvmm, models, args, labels)
            http = [] if args.no_latency or args.no_http else _http_rows(head.address, models, args.http_s, root)
            loss = _node_loss(cvmm, nodes[1], labels, models["affine (one op)"][0], args.clients, args.loss_s)
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.stop()
    shutil.rmtree(root, ignore_errors=True)  # kept when the run failed: the nodes' logs are there

    print(
        f"# aivmm cluster benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"ray {ray.__version__}, onnxruntime {ort.__version__}; `ray start` head 127.0.0.2 + worker 127.0.0.3"
    )
    print(
        f"# latency: batch 1, median of {args.calls} sequential calls; throughput: {args.concurrency} in flight, "
        f"{args.duration:g} s"
    )
    print(
        "| model | raw ms | direct ms (this process) | in worker agent ms | routed to worker ms | "
        "routing overhead ms | routed to head ms | as Ray actor call ms | direct req/s | routed req/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['raw_ms']:.3f} | {r['direct_ms']:.3f} | {r['in_agent_ms']:.3f} "
            f"| {r['worker_ms']:.3f} | {r['overhead_ms']:.3f} | {r['head_ms']:.3f} | {r['actor_ms']:.3f} "
            f"| {r['direct_rps']:.0f} | {r['worker_rps']:.0f} |"
        )
    if http:
        print("# HTTP, one client: `aivmm serve` vs `aivmm serve --ray` (same repository, p50; direct = mean of A-B-A)")
        print("| model | aivmm serve p50 ms | aivmm serve --ray p50 ms | overhead ms |")
        print("| --- | ---: | ---: | ---: |")
        for h in http:
            print(
                f"| {h['model']} | {h['http_direct_p50_ms']:.3f} | {h['http_ray_p50_ms']:.3f} "
                f"| {h['http_overhead_ms']:.3f} |"
            )
    checks = "Ray's default health checks" if args.default_health_checks else "health checks 300 ms x 3"
    print(f"# node loss (raylet SIGKILL, {args.clients} client threads, {checks}): {json.dumps(loss)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": rows, "http": http, "node_loss": loss}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
