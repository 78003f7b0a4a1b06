"""Overcommit: models totalling 3x the device budget under Zipf traffic.

24 MLPs of different sizes (0.25 to 1.5 MiB of weights; the largest about a third of the budget) are
deployed on one device whose budget holds a third of their bytes. An open-loop Poisson stream of
requests (Zipf popularity, the ranks shuffled so popularity is independent of size) is served for a
fixed time under each eviction policy; every policy sees the same arrival sequence. Reported: the
share of requests answered within the latency SLO (measured from the scheduled arrival), goodput
(answers within SLO per second), loads and evictions, each against the all-resident ideal (a budget
that holds every model) and against count-based LRU as Ray Serve's model multiplexing does it (at
most k models per replica, k = the budget over the mean model size).

    python benchmarks/overcommit.py [--rate 80] [--seconds 20] [--slo-ms 25] [--zipf 1.1] [--seed 0]

Runs on the CPU with ONNX Runtime (a configured budget stands in for device memory). On a busy
machine the CPU's own contention dominates; ``--simulated-gbps 0.2`` serves on an emulated
accelerator instead (1 ms of device time per request, weights uploaded over a 0.2 GB/s bus, both
serialised per device, evicted models parked in host memory), which isolates the policy. On the
H100 machine add ``--backend torch --device nvidia:0``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

WIDTHS = tuple(range(128, 320, 8))  # 24 MLPs of 4 layers: 0.25 to 1.5 MiB of weights each


def _traffic(n_models: int, rate: float, seconds: float, zipf: float, seed: int) -> list[tuple[float, int]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_models + 1) ** zipf
    weights /= weights.sum()
    ranks = rng.permutation(n_models)  # model ranks[i] has the i-th popularity
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5)))
    arrivals = arrivals[arrivals < seconds]
    picks = rng.choice(n_models, size=len(arrivals), p=weights)
    return [(float(t), int(ranks[p])) for t, p in zip(arrivals, picks)]


def _serve(
    engine: Any,
    handles: list[Any],
    feeds: list[dict[str, np.ndarray]],
    schedule: list[tuple[float, int]],
    slo_s: float,
    workers: int,
) -> dict[str, Any]:
    latencies = np.full(len(schedule), np.inf)
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def one(i: int, at: float, m: int) -> None:
        try:
            handles[m].infer(feeds[m])
            latencies[i] = time.perf_counter() - (start + at)
        except Exception as exc:  # counted, never hidden: an error is a miss
            with lock:
                errors.append(repr(exc))

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, (at, m) in enumerate(schedule):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, at, m)
    elapsed = max(schedule[-1][0], 1e-9)
    ok = latencies <= slo_s
    status = engine.status()
    finite = latencies[np.isfinite(latencies)] * 1e3
    return {
        "requests": len(schedule),
        "within_slo": float(ok.mean()),
        "goodput": float(ok.sum() / elapsed),
        "p50_ms": float(np.percentile(finite, 50)) if len(finite) else float("nan"),
        "p99_ms": float(np.percentile(finite, 99)) if len(finite) else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "loads": sum(m["loads"] for m in status["models"].values()),
        "evictions": sum(m["evictions"] for m in status["models"].values()),
        "peak_bytes": max(d["peak_bytes"] for d in status["devices"].values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=80.0, help="requests per second (Poisson)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--slo-ms", type=float, default=25.0)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--ratio", type=float, default=3.0, help="total model bytes / budget")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu:0")
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument(
        "--simulated-gbps",
        type=float,
        default=0.0,
        help="serve on an emulated accelerator with a bus of this many GB/s (0: the real device)",
    )
    ap.add_argument("--device-ms", type=float, default=1.0, help="emulated device time per request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="one MLP (4 layers) per width")
    args = ap.parse_args()

    from aivmm.backends._base import Config
    from aivmm.devices import discover
    from aivmm.memory import CostBenefitPolicy, CountLruPolicy, LruPolicy
    from aivmm.runtime import Engine
    from aivmm.runtime._toy import inputs, mlp, simulated_device

    if args.simulated_gbps:
        # An emulated accelerator: device time per request and a host-to-device bus of the given
        # speed, both serialised per device; the numbers still come from ONNX Runtime on this CPU.
        device = simulated_device(
            "nvidia:0",
            memory=2**34,
            simulated_latency_ms=args.device_ms,
            simulated_h2d_bytes_per_s=args.simulated_gbps * 1e9,
        )
        args.backend = "simulated"
    else:
        device = next(d for d in discover() if d.id == args.device)
    root = Path(tempfile.mkdtemp(prefix="aivmm-overcommit-"))
    widths = [int(w) for w in args.widths.split(",")]
    specs = [mlp(root / f"m{i}.onnx", width=w, layers=4, seed=i, name=f"m{i}") for i, w in enumerate(widths)]
    feeds = [inputs(s, 1, seed=i) for i, s in enumerate(specs)]
    sizes = [s.parameter_bytes for s in specs]
    total = sum(sizes)
    budget = int(total / args.ratio)
    options = {"intra_op_threads": 1} if args.backend in ("onnxruntime", "simulated") else {}
    config = Config(args.backend, device.id, options=options)
    count_k = max(1, int(budget / (total / len(specs))))
    policies: list[tuple[str, Any, int]] = [
        ("all-resident ideal", CostBenefitPolicy(), total * 4),
        ("aivmm cost-benefit", CostBenefitPolicy(), budget),
        ("bytes LRU", LruPolicy(), budget),
        (f"count LRU (k={count_k}, Ray Serve style)", CountLruPolicy(count_k), budget),
    ]
    warm = _traffic(len(specs), args.rate, args.warmup, args.zipf, args.seed + 1)
    schedule = _traffic(len(specs), args.rate, args.seconds, args.zipf, args.seed)
    rows: dict[str, dict[str, Any]] = {}
    for name, policy, cap in policies:
        with Engine([device], budgets={device.id: cap}, policy=policy) as engine:
            handles = [engine.add(s.name, s, [(config, device)]) for s in specs]
            _serve(engine, handles, feeds, warm, args.slo_ms / 1e3, args.workers)
            before = engine.status()
            loads0 = sum(m["loads"] for m in before["models"].values())
            ev0 = sum(m["evictions"] for m in before["models"].values())
            row = _serve(engine, handles, feeds, schedule, args.slo_ms / 1e3, args.workers)
            row["loads"] -= loads0
            row["evictions"] -= ev0
            row["budget_bytes"] = cap
            rows[name] = row
            print(f"{name}: {json.dumps(row)}", flush=True)
    ideal = rows["all-resident ideal"]
    print(
        f"\n# overcommit: {len(specs)} models, {total / 2**20:.1f} MiB of weights, budget {budget / 2**20:.1f} MiB"
        f" ({args.ratio:g}x), {device.id} via {args.backend}"
    )
    print(
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"rate {args.rate:g}/s Poisson for {args.seconds:g} s, Zipf s={args.zipf}, SLO {args.slo_ms:g} ms\n"
    )
    print("| policy | within SLO | goodput /s | vs ideal | p50 ms | p99 ms | loads | evictions | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['within_slo']:.3f} | {r['goodput']:.1f} | {r['goodput'] / ideal['goodput']:.3f} |"
            f" {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['loads']} | {r['evictions']} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
