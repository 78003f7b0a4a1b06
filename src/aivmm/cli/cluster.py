"""``aivmm cluster``: this node's devices as Ray custom resources, and the cluster's registry.

ray start --address HEAD:6379 --resources "$(aivmm cluster resources)"   # publish at start
aivmm cluster status --ray HEAD:6379 [--json]                            # models, copies, claims
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    res = sub.add_parser("resources", help="print this node's devices as Ray resources (JSON for ray start)")
    res.add_argument("--simulate", help="add simulated devices from a JSON spec (as AIVMM_SIMULATE)")
    st = sub.add_parser("status", help="the cluster registry: nodes, models, copies, device claims")
    st.add_argument(
        "--ray",
        metavar="ADDRESS",
        nargs="?",
        const="auto",
        default="auto",
        help="HOST:PORT or 'auto' (default: $RAY_ADDRESS or the local `ray start` cluster)",
    )
    st.add_argument("--ray-node-ip", metavar="IP", default=None, help="the local Ray node's IP to attach to")
    st.add_argument("--json", action="store_true", help="print the whole status as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "resources":
        from aivmm.cluster import node_resources
        from aivmm.devices import discover

        print(json.dumps(node_resources(discover(simulate=args.simulate))))
        return 0
    from aivmm.cluster import ClusterVMM

    with ClusterVMM(args.ray, node_ip_address=args.ray_node_ip) as cluster:
        doc = cluster.status()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for node in doc["nodes"]:
        print(f"{node['node']}  {node['endpoint'][0]}  resources {node['resources']}  {', '.join(node['devices'])}")
    for name, model in doc["models"].items():
        where = ", ".join(c["device"] for c in model["copies"]) or f"nothing ({model['failure']})"
        print(f"{name}: {where}  holders {model['holders']}")
    print(f"claims: {', '.join(doc['claims']) or 'none'}")
    return 0
