"""Dynamic batching: throughput with and without it, at the same p99 latency.

Closed-loop clients (threads) call the engine at rising concurrency; for each mode the best
throughput whose p99 stays within the SLO is reported, and the ratio batched / unbatched. The SLO
defaults to 4x the unbatched single-client p99 (so both modes are judged at one latency target).
The raw runtime's single-client throughput at batch 1 is printed for reference.

CPU (this machine)::

    python benchmarks/batching.py --model resnet50 --size tiny --backend onnxruntime --device cpu:0

GPU (the H100 machine; torch backend, goal >= 3x)::

    python benchmarks/batching.py --model resnet50 --size full --backend torch --device nvidia:0 \
        --max-batch 64 --delay-ms 2 --levels 1,2,4,8,16,32,64,128
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import threading
import time
from typing import Any

import numpy as np


def _level(handle: Any, feeds: dict[str, np.ndarray], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            handle.infer(feeds)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "throughput": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu:0")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--slo-ms", type=float, default=None)
    ap.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (a planner choice; fp16 on GPUs)")
    ap.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="torch backend: replay CUDA graphs (batches padded to --preferred-sizes, one graph each)",
    )
    ap.add_argument("--preferred-sizes", default="", help="comma list: pad batches up to these sizes")
    args = ap.parse_args()

    from aivmm.backends._base import Config
    from aivmm.devices import discover
    from aivmm.models import load, zoo
    from aivmm.options import DeployOptions
    from aivmm.runtime import BatchingConfig, Engine

    device = next(d for d in discover() if d.id == args.device)
    spec = load(zoo.build(args.model, args.size))
    feeds = zoo.sample_inputs(args.model, args.size, batch=1)
    from aivmm.dtypes import Precision

    config = Config(
        args.backend, device.id, Precision.parse(args.precision), {"cuda_graphs": True} if args.cuda_graphs else {}
    )
    preferred = tuple(int(x) for x in args.preferred_sizes.split(",") if x)
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, list[dict[str, float]]] = {}
    with Engine([device]) as engine:
        plain = engine.add("plain", spec, [(config, device)])
        batched = engine.add(
            "batched",
            spec,
            [(config, device)],
            DeployOptions(
                batching=BatchingConfig(args.max_batch, args.delay_ms, preferred_sizes=preferred, max_queue_size=4096)
            ),
        )
        for h in (plain, batched):
            for _ in range(20):
                h.infer(feeds)
        raw = engine.get("plain").replicas[0].session
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < args.seconds:
            raw.run(feeds)
            n += 1
        raw_tput = n / (time.perf_counter() - t0)
        for name, h in (("unbatched", plain), ("batched", batched)):
            results[name] = [_level(h, feeds, c, args.seconds) for c in levels]
        mean_batch = batched.stats()["batches"]["mean_size"]
    slo = args.slo_ms or 4 * results["unbatched"][0]["p99_ms"]
    best = {
        name: max((r for r in rows if r["p99_ms"] <= slo), key=lambda r: r["throughput"], default=None)
        for name, rows in results.items()
    }
    ratio = (
        best["batched"]["throughput"] / best["unbatched"]["throughput"]
        if best["batched"] and best["unbatched"]
        else float("nan")
    )
    print(f"# batching: {args.model}/{args.size} on {device.id} ({device.name}) via {args.backend} {args.precision}")
    print(
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()},"
        f" python {platform.python_version()}"
    )
    print(f"raw session, one client, batch 1: {raw_tput:.1f} inf/s")
    print(
        f"SLO p99 <= {slo:.2f} ms; BatchingConfig(max_batch_size={args.max_batch},"
        f" max_queue_delay_ms={args.delay_ms}); mean batch over the run {mean_batch:.2f}\n"
    )
    print("| mode | clients | inf/s | p50 ms | p99 ms | within SLO |")
    print("|---|---:|---:|---:|---:|:---:|")
    for name, rows in results.items():
        for r in rows:
            print(
                f"| {name} | {r['clients']} | {r['throughput']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
                f" {'yes' if r['p99_ms'] <= slo else 'no'} |"
            )
    print(
        f"\nbest within SLO: unbatched {best['unbatched'] and round(best['unbatched']['throughput'], 1)} inf/s,"
        f" batched {best['batched'] and round(best['batched']['throughput'], 1)} inf/s -> ratio {ratio:.2f}x"
    )
    print(
        json.dumps(
            {
                "benchmark": "batching",
                "device": device.id,
                "backend": args.backend,
                "model": args.model,
                "size": args.size,
                "slo_ms": slo,
                "ratio": ratio,
                "raw_inf_per_s": raw_tput,
                "results": results,
                "median_p99": statistics.median(r["p99_ms"] for r in results["batched"]),
            }
        )
    )


if __name__ == "__main__":
    main()
