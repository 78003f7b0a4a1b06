"""aivmm serve against Ray Serve: the same ONNX Runtime session config, the same load generator.

Both servers run on 127.0.0.1 on this machine, one after the other (A, then B, then A again to
show drift). aivmm is pinned to ONNX Runtime on cpu:0 so both run the same runtime; Ray Serve
serves an ``onnxruntime.InferenceSession`` with the same thread settings behind its HTTP proxy,
taking the raw float32 bytes of the input (its leanest path). The load generator is aivmm's
closed loop (``aivmm.serve.loadgen``), one keep-alive connection per worker.

    python benchmarks/serve_vs_ray.py [--model resnet50] [--size full] [--concurrency 1,2,4] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sys
import tempfile
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import serve_common
from aivmm.models import zoo
from aivmm.serve import loadgen as lg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(factory: lg.Factory, levels: list[int], duration: float, label: str) -> list[dict[str, Any]]:
    out = []
    for c in levels:
        r = lg.closed_loop(factory, c, duration, warmup_s=2.0, label=label)
        out.append(r.to_json())
        print(
            f"{label}: concurrency {c}: {r.throughput:.2f}/s p50 {r.percentile(50) * 1e3:.1f} ms "
            f"p99 {r.percentile(99) * 1e3:.1f} ms errors {r.errors}",
            file=sys.stderr,
        )
    return out


def _aivmm(
    path: pathlib.Path, model: str, feeds: dict[str, Any], levels: list[int], duration: float, tmp: pathlib.Path
) -> tuple[list[dict[str, Any]], str]:
    repo = serve_common.repository_with(tmp, model, path, {"backend": "onnxruntime", "device": "cpu:0"})
    with serve_common.server(repo, "--load", model) as ready:
        url = f"127.0.0.1:{ready['http_port']}"
        import urllib.request

        with urllib.request.urlopen(f"http://{url}/v2/aivmm/status") as r:
            placement = json.load(r)["models"][0]["placement"]
        return _sweep(lg.http_target(url, model, feeds), levels, duration, "aivmm"), placement


def _ray(
    path: pathlib.Path, feeds: dict[str, Any], levels: list[int], duration: float, intra_threads: int
) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    ((name, x),) = feeds.items()
    port = _free_port()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})
        class OrtModel:
            def __init__(self, model_path: str, input_name: str, shape: tuple[int, ...], threads: int) -> None:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                self.session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
                self.input_name = input_name
                self.shape = shape

            async def __call__(self, request: Any) -> Any:
                import numpy as np
                from starlette.responses import Response

                body = await request.body()
                x = np.frombuffer(body, np.float32).reshape(self.shape)
                y = self.session.run(None, {self.input_name: x})[0]
                return Response(y.tobytes(), media_type="application/octet-stream")

        serve.run(OrtModel.bind(str(path), name, tuple(x.shape), intra_threads), route_prefix="/infer")
        factory = lg.raw_http_target(
            f"127.0.0.1:{port}", "/infer", x.astype("float32").tobytes(), {"Content-Type": "application/octet-stream"}
        )
        return _sweep(factory, levels, duration, "ray-serve")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", default="full", choices=("tiny", "full"))
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--no-repeat", action="store_true", help="skip the second aivmm run (drift check)")
    args = ap.parse_args()
    # A new local ray.init() turns token authentication on and writes ~/.ray/auth_token unless told
    # otherwise; that file then switches on authentication for every later `ray start` on this
    # machine. The benchmark needs none: say so instead of leaving that behind.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    levels = [int(v) for v in args.concurrency.split(",")]
    path = zoo.build(args.model, args.size)
    feeds = zoo.sample_inputs(args.model, args.size, batch=1)
    from aivmm.backends._ort_providers import physical_cores
    from aivmm.devices import discover

    cpu = next(d for d in discover() if d.id == "cpu:0")
    threads = int(physical_cores(cpu))
    with tempfile.TemporaryDirectory() as tmp:
        a1, placement = _aivmm(path, args.model, feeds, levels, args.duration, pathlib.Path(tmp))
        b = _ray(path, feeds, levels, args.duration, threads)
        a2 = [] if args.no_repeat else _aivmm(path, args.model, feeds, levels, args.duration, pathlib.Path(tmp))[0]
    rows = []
    for i, c in enumerate(levels):
        runs = [a1[i]] + ([a2[i]] if a2 else [])
        tput = sum(r["throughput"] for r in runs) / len(runs)  # the mean of the aivmm runs around Ray's
        p99 = sum(r["p99_ms"] for r in runs) / len(runs)
        rows.append(
            {
                "concurrency": c,
                "aivmm_throughput": round(tput, 3),
                "ray_throughput": b[i]["throughput"],
                "throughput_ratio": round(tput / b[i]["throughput"], 4) if b[i]["throughput"] else None,
                "aivmm_p99_ms": round(p99, 3),
                "ray_p99_ms": b[i]["p99_ms"],
                "p99_ratio": round(p99 / b[i]["p99_ms"], 4) if b[i]["p99_ms"] else None,
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "serve_vs_ray",
                "model": f"{args.model}/{args.size}",
                "aivmm_placement": placement,
                "ray_session": f"onnxruntime CPU, intra_op_threads={threads}, graph_optimization=all",
                "duration_s": args.duration,
                "summary": rows,
                "aivmm_runs": [a1, a2],
                "ray": b,
                "machine": serve_common.machine(),
                "note": "aivmm figures: mean of the runs before and after Ray (A-B-A)",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
