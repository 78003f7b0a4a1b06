"""Serving overhead: HTTP (and gRPC) p50 at batch 1 over in-process ``execute`` p50, same model.

The in-process model and the server's copy are deployed from the same file with the same pinned
backend, so the ratio is the cost of the protocol path (client encode, loopback, server decode,
scheduling, encode, client decode). Rounds alternate in-process / HTTP / gRPC so machine noise
hits all alike; the ratio is the median of per-round ratios. Goal: HTTP/in-process <= 1.05 on the
ResNet-50-class model. The order within a round rotates (see the comment there).

    python benchmarks/serve_overhead.py [--model resnet50] [--size full] [--rounds 7] [--calls 10]
        [--backend onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import serve_common
from aivmm.models import zoo
from aivmm.serve import loadgen as lg
from aivmm.vmm import VMM


def _p50(call: lg.Call, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", default="full", choices=("tiny", "full"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10, help="calls per transport per round")
    ap.add_argument("--backend", help="pin this backend in both (default: the in-process plan's choice)")
    args = ap.parse_args()

    path = zoo.build(args.model, args.size)
    feeds = zoo.sample_inputs(args.model, args.size, batch=1)
    with VMM() as vmm, tempfile.TemporaryDirectory() as tmp:
        local = vmm.deploy(
            path, backend=args.backend, device="cpu:0" if args.backend else None, strict=bool(args.backend)
        )
        chosen = local.plan.chosen.config
        repo = serve_common.repository_with(
            pathlib.Path(tmp), args.model, path, {"backend": chosen.backend, "device": chosen.device}
        )
        with serve_common.server(repo) as ready:
            http_call = lg.http_target(f"127.0.0.1:{ready['http_port']}", args.model, feeds)()
            grpc_call = lg.grpc_target(f"127.0.0.1:{ready['grpc_port']}", args.model, feeds)()
            local_call = lg.in_process(local, feeds)()
            for call in (local_call, http_call, grpc_call):  # warm-up
                _p50(call, 3)
            rows = []
            calls = {"local": local_call, "http": http_call, "grpc": grpc_call}
            order = list(calls)
            for i in range(args.rounds):
                # Rotate the order: a runtime's threads keep spinning for a while after a call, which
                # slows whatever runs right after it; rotation spreads that over all three.
                turn = order[i % 3 :] + order[: i % 3]
                rows.append({name: _p50(calls[name], args.calls) for name in turn})
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{ready['http_port']}/v2/aivmm/status") as r:
                served = json.load(r)["models"][0]["placement"]
    report = {
        "benchmark": "serve_overhead",
        "model": f"{args.model}/{args.size}",
        "batch": 1,
        "in_process_placement": chosen.label(),
        "server_placement": served,
        "in_process_p50_ms": round(statistics.median(r["local"] for r in rows) * 1e3, 3),
        "http_p50_ms": round(statistics.median(r["http"] for r in rows) * 1e3, 3),
        "grpc_p50_ms": round(statistics.median(r["grpc"] for r in rows) * 1e3, 3),
        "http_over_in_process": round(statistics.median(r["http"] / r["local"] for r in rows), 4),
        "grpc_over_in_process": round(statistics.median(r["grpc"] / r["local"] for r in rows), 4),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "machine": serve_common.machine(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
