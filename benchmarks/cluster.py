"""Requests per second through one and two local Ray nodes, and the routing overhead per request
against a direct in-process call (a benchmark, not a test).

    python benchmarks/cluster.py                       # the zoo's tiny resnet50 and a one-op model
    python benchmarks/cluster.py --duration 5 --concurrency 8 --json out.json

Variants, all on this machine's CPU through ONNX Runtime:
  ``raw``      onnxruntime.InferenceSession.run in this process
  ``direct``   aivmm.VMM deploy + execute in this process (the façade and engine, no Ray)
  ``1 node``   ClusterVMM on a one-node loopback Ray cluster: head → node agent actor → engine
  ``2 nodes``  ClusterVMM with a replica on each of two loopback nodes (same machine, same cores)
Latency: median of sequential calls (concurrency 1). Throughput: closed loop, ``--concurrency``
requests in flight (asyncio, ``execute_async``), for ``--duration`` seconds.
Both nodes share this machine's cores, so "2 nodes" measures the routing, not more hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))


def _latency_ms(call: Any, feeds: dict[str, np.ndarray], n: int) -> float:
    for _ in range(max(5, n // 10)):
        call(feeds)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _throughput(model: Any, feeds: dict[str, np.ndarray], concurrency: int, duration: float) -> float:
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
        "resnet50 tiny": (zoo.build("resnet50"), zoo.sample_inputs("resnet50")),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="sequential calls per latency figure")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per throughput figure")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight for throughput")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import onnxruntime as ort
    import ray
    from ray.cluster_utils import Cluster

    from aivmm.cluster import ClusterVMM
    from aivmm.cluster._ray import connect
    from aivmm.vmm import VMM
    from conftest import NODE_ARGS

    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="aivmm-bench-cluster-"))
    models = _models(workdir)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "num_cpus": 2, "include_dashboard": False})
    try:
        connect(cluster.address, node_ip_address="127.0.0.1", namespace="aivmm-bench")
        for label, (path, feeds) in models.items():
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            row: dict[str, Any] = {"model": label}
            row["raw_ms"] = _latency_ms(lambda f, s=sess: s.run(None, f), feeds, args.calls)
            with VMM() as vmm:
                m = vmm.deploy(str(path), device="cpu:0", backend="onnxruntime", measure=False)
                row["direct_ms"] = _latency_ms(m.execute, feeds, args.calls)
                row["direct_rps"] = _throughput(m, feeds, args.concurrency, args.duration)
            rows.append(row)
        with ClusterVMM(namespace="aivmm-bench") as cvmm:
            for row in rows:
                path, feeds = models[row["model"]]
                m = cvmm.deploy(str(path), name="one", backend="onnxruntime", measure=False,
                                device=next(d.id for d in cvmm.devices if d.id.endswith("/cpu:0")))
                row["1node_ms"] = _latency_ms(m.execute, feeds, args.calls)
                row["1node_rps"] = _throughput(m, feeds, args.concurrency, args.duration)
                cvmm.unload("one")
        cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes(timeout=60)
        with ClusterVMM(namespace="aivmm-bench2") as cvmm:
            for row in rows:
                path, feeds = models[row["model"]]
                m = cvmm.deploy(str(path), name="two", backend="onnxruntime", measure=False, replicas=2)
                assert len({t.node for t in m.router.targets()}) == 2, m.stats()
                row["2nodes_ms"] = _latency_ms(m.execute, feeds, args.calls)
                row["2nodes_rps"] = _throughput(m, feeds, args.concurrency, args.duration)
                cvmm.unload("two")
    finally:
        ray.shutdown()
        cluster.shutdown()

    print(f"# aivmm cluster benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"ray {ray.__version__}, onnxruntime {ort.__version__}")
    print(f"# latency: median of {args.calls} sequential calls; throughput: {args.concurrency} in flight, "
          f"{args.duration:g} s")
    print("| model | raw ms | direct ms | 1 node ms | routing overhead ms (1 node − direct) | direct req/s | "
          "1 node req/s | 2 nodes req/s | 2 nodes / 1 node |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['raw_ms']:.3f} | {r['direct_ms']:.3f} | {r['1node_ms']:.3f} | "
              f"{r['1node_ms'] - r['direct_ms']:.3f} | {r['direct_rps']:.0f} | {r['1node_rps']:.0f} | "
              f"{r['2nodes_rps']:.0f} | {r['2nodes_rps'] / r['1node_rps']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
