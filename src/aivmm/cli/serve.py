"""``aivmm serve``: the KServe v2 / Open Inference Protocol over HTTP and gRPC.

aivmm serve                                  # the built-in zoo on 127.0.0.1:8000 (HTTP), :8001 (gRPC)
aivmm serve --model-repository ./models      # a Triton-style repository, as it is
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from aivmm.errors import ConfigError

if TYPE_CHECKING:
    from aivmm.serve import ServeOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aivmm.cli._constraint_flags import add_constraint_arguments

    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        help="Triton-style repository (DIR/<model>/<version>/model.onnx) or flat DIR/<name>.onnx "
        "(default: the built-in zoo)",
    )
    parser.add_argument(
        "--zoo-size",
        choices=("tiny", "full"),
        default="tiny",
        help="without a repository: serve the zoo's tiny (default) or full-size models",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (0: any free port)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: any free port, -1: no gRPC)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus port (0: any free port, -1: only /metrics on the HTTP port)",
    )
    parser.add_argument(
        "--token", default=None, help="bearer token required by load/unload (default: $AIVMM_TOKEN; none: open)"
    )
    parser.add_argument(
        "--load",
        action="append",
        default=None,
        metavar="MODEL",
        help="load only these models at start (repeatable); default: all",
    )
    parser.add_argument("--no-load", action="store_true", help="load nothing at start (use the repository API)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (default 64 MB)")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=512,
        help="requests in flight per model before new ones get 429 (default 512)",
    )
    parser.add_argument("--request-timeout-s", type=float, default=60.0, help="per-request time limit (default 60)")
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=30.0,
        help="how long shutdown and unload wait for in-flight requests (default 30)",
    )
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="a client must send its whole request body within this time (default 30)",
    )
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="plan from the cost model only, without measuring candidates (faster start)",
    )
    parser.add_argument("--simulate", help="add simulated devices from a JSON spec (as AIVMM_SIMULATE)")
    parser.add_argument("--memory-budget", help="per-device memory budgets, e.g. 'cpu:0=4GiB,nvidia:0=20GiB'")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        nargs="?",
        const="auto",
        default=None,
        help="serve from a Ray cluster: HOST:PORT, or 'auto' (the default with no value: "
        "$RAY_ADDRESS, else the cluster `ray start` started on this machine); models are "
        "shared through the cluster's registry (see docs/cluster.md)",
    )
    parser.add_argument(
        "--ray-node-ip",
        metavar="IP",
        default=None,
        help="the IP of the local Ray node to attach to, when this machine runs several "
        "(default: as Ray chooses, the head if it is local)",
    )
    add_constraint_arguments(parser)


def _port(value: int, flag: str) -> int | None:
    if value == -1:
        return None
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag} must be a port in [0, 65535] or -1, got {value}")
    return value


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    from aivmm.cli._constraint_flags import constraints_from_args
    from aivmm.serve import Limits, ServeOptions

    if (
        args.max_body_mb <= 0
        or args.max_inflight < 1
        or args.request_timeout_s <= 0
        or args.drain_timeout_s < 0
        or args.body_timeout_s <= 0
    ):
        raise ConfigError("--max-body-mb, --max-inflight, --request-timeout-s and --body-timeout-s must be positive")
    if args.no_load and args.load:
        raise ConfigError("--no-load and --load contradict each other")
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"--http-port must be in [0, 65535], got {args.http_port}")
    constraints = constraints_from_args(args)
    return ServeOptions(
        repository=args.model_repository,
        zoo_size=args.zoo_size,
        host=args.host,
        http_port=args.http_port,
        grpc_port=_port(args.grpc_port, "--grpc-port"),
        metrics_port=_port(args.metrics_port, "--metrics-port"),
        token=args.token or os.environ.get("AIVMM_TOKEN") or None,
        load=() if args.no_load else (tuple(args.load) if args.load else None),
        limits=Limits(
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            max_inflight_per_model=args.max_inflight,
            request_timeout_s=args.request_timeout_s,
            drain_timeout_s=args.drain_timeout_s,
            body_timeout_s=args.body_timeout_s,
        ),
        measure=not args.no_measure,
        constraints=constraints,
    )


def run(args: argparse.Namespace) -> int:
    from aivmm.serve import serve
    from aivmm.vmm import VMM

    options = options_from_args(args)
    if getattr(args, "ray", None):
        if args.simulate or args.memory_budget:
            raise ConfigError(
                "with --ray, simulate devices per node (AIVMM_SIMULATE in each node's environment); "
                "--simulate and --memory-budget apply to a single machine only"
            )
        from aivmm.cluster import ClusterVMM

        with ClusterVMM(args.ray, node_ip_address=args.ray_node_ip) as cluster:
            return serve(options, cluster)
    with VMM(simulate=args.simulate, memory_budget=args.memory_budget) as vmm:
        return serve(options, vmm)
