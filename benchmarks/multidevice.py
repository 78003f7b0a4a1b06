"""Several devices: replicas with least-outstanding-work dispatch, and a pipeline split.

Part 1 - replicas. One model served by one replica, then by replicas on two devices; closed-loop
clients; throughput and p99 of each, and how the requests were shared. On this machine both are simulated
accelerators of different speeds (2 ms and 6 ms of device time per request, serialised per device;
the ideal with both is 1/2 + 1/6 = 1.33x the fast one alone), so the figure measures the dispatch. On the H100 machine
(``--gpu``): replicas on the CPU (ONNX Runtime) and on the GPU (torch) against the GPU alone.

Part 2 - split. A model too large for either of two simulated devices is split into pipeline
stages by parameter memory; its outputs are compared with the unsplit run and its latency with the
unsplit ONNX Runtime session; the planner's transfer-cost estimate for the cut is printed.

    python benchmarks/multidevice.py [--seconds 5] [--clients 8]
    python benchmarks/multidevice.py --gpu --model resnet50 --size full     # on the H100 machine
    python benchmarks/multidevice.py --gpu --gpu-precision fp16 --gpu-cuda-graphs --cpu-threads 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _closed_loop(handle: Any, feeds: dict[str, np.ndarray], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            handle.infer(feeds)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array(latencies) * 1e3
    return {
        "throughput": len(lat) / (time.perf_counter() - t0),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def replicas(args: argparse.Namespace) -> None:
    from aivmm.backends._base import Config
    from aivmm.devices import discover
    from aivmm.runtime import Engine
    from aivmm.runtime._toy import inputs, mlp, simulated_device

    devices = list(discover())
    first = next(d for d in devices if d.id == "cpu:0")
    if args.gpu:
        from aivmm.models import load, zoo

        second = next(d for d in devices if d.id.startswith("nvidia:"))
        spec = load(zoo.build(args.model, args.size))
        feeds = zoo.sample_inputs(args.model, args.size, batch=1)
        from aivmm.dtypes import Precision

        # The GPU replica is fed by host threads (kernel launches): leave it cores by capping the CPU
        # replica's threads, and replay CUDA graphs when asked so launches cost little host time.
        gpu_options = {"cuda_graphs": True} if args.gpu_cuda_graphs else {}
        first_cfg = Config(
            "onnxruntime", first.id, options={"intra_op_threads": args.cpu_threads} if args.cpu_threads else {}
        )
        second_cfg = Config("torch", second.id, Precision.parse(args.gpu_precision), gpu_options)
        alone = [(second_cfg, second)]
    else:
        # Two simulated accelerators of different speeds: 2 ms and 6 ms of (serialised) device time
        # per request; the model's own compute on this CPU is negligible beside it.
        first = simulated_device("nvidia:0", memory=8 * 2**30, simulated_latency_ms=2.0)
        second = simulated_device("amd:0", memory=8 * 2**30, simulated_latency_ms=6.0)
        spec = mlp(Path(tempfile.mkdtemp()) / "m.onnx", width=64, layers=2)
        feeds = inputs(spec, 1)
        first_cfg = Config("simulated", first.id, options={"intra_op_threads": 1})
        second_cfg = Config("simulated", second.id, options={"intra_op_threads": 1})
        alone = [(first_cfg, first)]
    rows = {}
    with Engine([first, second]) as engine:
        one = engine.add("one", spec, alone)
        both = engine.add("both", spec, [(first_cfg, first), (second_cfg, second)])
        for h in (one, both):
            for _ in range(10):
                h.infer(feeds)
        rows["one replica (" + alone[0][1].id + ")"] = _closed_loop(one, feeds, args.clients, args.seconds)
        rows[f"replicas on {first.id} + {second.id}"] = _closed_loop(both, feeds, args.clients, args.seconds)
        share = {r["device"]: r["requests"] for r in both.stats()["replicas"]}
    print(f"## replicas ({'GPU machine' if args.gpu else 'two simulated devices'}), {args.clients} clients\n")
    print("| placement | inf/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['throughput']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    values = list(rows.values())
    print(
        f"\nthroughput ratio (replicas / one): {values[1]['throughput'] / values[0]['throughput']:.2f}x;"
        f" requests per device: {share}"
    )
    print(json.dumps({"part": "replicas", "rows": rows, "share": share}))


def split(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from aivmm.backends._base import Config
    from aivmm.runtime import Engine
    from aivmm.runtime._toy import inputs, mlp, simulated_device

    root = Path(tempfile.mkdtemp(prefix="aivmm-split-"))
    spec = mlp(root / "big.onnx", width=1024, layers=8, name="big")  # 32 MiB of weights
    half = int(spec.parameter_bytes * 0.6)
    a = simulated_device("nvidia:0", memory=2**30)
    b = simulated_device("amd:0", memory=2**30)
    x = inputs(spec, 4, seed=1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    unsplit = ort.InferenceSession(spec.source, so, providers=["CPUExecutionProvider"])
    want = unsplit.run(None, x)[0]
    with Engine([a, b], budgets={a.id: half, b.id: half}, work_dir=root) as engine:
        h = engine.add("big", spec, [(Config("simulated", a.id, options={"intra_op_threads": 1}), a)])
        got = h.infer(x)["y"]
        plan = h.split_plan
        t_split, t_unsplit = [], []
        for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
            t0 = time.perf_counter()
            h.infer(x)
            t_split.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            unsplit.run(None, x)
            t_unsplit.append(time.perf_counter() - t0)
        used = {d: v["used_bytes"] for d, v in engine.status()["devices"].items()}
    diff = float(np.max(np.abs(got - want)))
    ms_split, ms_unsplit = statistics.median(t_split) * 1e3, statistics.median(t_unsplit) * 1e3
    print(
        f"\n## split: {spec.parameter_bytes / 2**20:.1f} MiB model, budget {half / 2**20:.1f} MiB on each of"
        f" {a.id} and {b.id}\n"
    )
    print(
        f"stages: {[(s.device, s.end_node - s.first_node, round(s.parameter_bytes / 2**20, 2)) for s in plan.stages]}"
        f" (device, nodes, MiB); ledger used: {used}"
    )
    print(
        f"max |split - unsplit| = {diff:.3g}; batch 4 median latency: split {ms_split:.2f} ms, unsplit"
        f" {ms_unsplit:.2f} ms (ratio {ms_split / ms_unsplit:.2f}); cut bytes per item {plan.cut_bytes_per_item},"
        f" transfer estimate at 16 GB/s for batch 4: {plan.transfer_seconds(4, 16e9) * 1e6:.2f} us"
    )
    print(
        json.dumps(
            {
                "part": "split",
                "max_abs_diff": diff,
                "split_ms": ms_split,
                "unsplit_ms": ms_unsplit,
                "plan": plan.to_json(),
            }
        )
    )


def split_gpu(args: argparse.Namespace) -> None:
    """A model larger than the GPU's budget split across the GPU (torch) and the CPU (ONNX Runtime)."""
    from aivmm.backends._base import Config
    from aivmm.devices import discover
    from aivmm.models import load, zoo
    from aivmm.runtime import Engine

    devices = {d.id: d for d in discover()}
    cpu, gpu = devices["cpu:0"], next(d for i, d in devices.items() if i.startswith("nvidia:"))
    spec = load(zoo.build(args.model, args.size))
    feeds = zoo.sample_inputs(args.model, args.size, batch=1)
    budget = int(spec.parameter_bytes * 0.6)
    gpu_cfg, cpu_cfg = Config("torch", gpu.id), Config("onnxruntime", cpu.id)
    with Engine([gpu]) as whole_engine:
        whole = whole_engine.add("whole", spec, [(gpu_cfg, gpu)])
        want = whole.infer(feeds)
        t_whole = _median_latency(whole, feeds, args.rounds)
    with Engine([gpu, cpu], budgets={gpu.id: budget}) as engine:
        h = engine.add("split", spec, [(gpu_cfg, gpu), (cpu_cfg, cpu)], split=True)
        got = h.infer(feeds)
        plan = h.split_plan
        t_split = _median_latency(h, feeds, args.rounds)
    diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    predicted = plan.transfer_seconds(1, gpu.properties.get("h2d_bytes_per_s", 25e9)) * 1e3
    print(
        f"\n## split across {gpu.id} + {cpu.id}: {spec.name} ({args.size}), {spec.parameter_bytes / 2**20:.1f} MiB,"
        f" GPU budget {budget / 2**20:.1f} MiB\n"
    )
    stages = [(st.device, st.end_node - st.first_node, round(st.parameter_bytes / 2**20, 1)) for st in plan.stages]
    print(f"stages: {stages} (device, nodes, MiB); cut bytes per item {plan.cut_bytes_per_item}")
    print(
        f"max |split - whole on GPU| = {diff:.3g}; batch 1 median latency: split {t_split:.2f} ms, whole on the GPU"
        f" with a larger budget {t_whole:.2f} ms (ratio {t_split / t_whole:.2f}); planner's transfer estimate"
        f" {predicted * 1e3:.1f} us for the cut"
    )
    print(
        json.dumps(
            {
                "part": "split-gpu",
                "max_abs_diff": diff,
                "split_ms": t_split,
                "whole_ms": t_whole,
                "predicted_transfer_ms": predicted,
                "plan": plan.to_json(),
            }
        )
    )


def _median_latency(handle: Any, feeds: dict, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        handle.infer(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--gpu", action="store_true", help="replicas on cpu:0 and nvidia:0 (the H100 machine)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", default="full")
    ap.add_argument("--gpu-precision", default="fp32", help="precision of the GPU replica (--gpu)")
    ap.add_argument("--gpu-cuda-graphs", action="store_true", help="replay CUDA graphs on the GPU replica (--gpu)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="intra-op threads of the CPU replica (0: default)")
    ap.add_argument("--no-replicas", action="store_true", help="only the split part")
    args = ap.parse_args()
    print(
        f"# multidevice, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()},"
        f" python {platform.python_version()}\n"
    )
    if not args.no_replicas:
        replicas(args)
    split_gpu(args) if args.gpu else split(args)


if __name__ == "__main__":
    main()
