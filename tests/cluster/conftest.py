"""A real Ray cluster as users start it: ``ray start --head`` on 127.0.0.2, a worker on 127.0.0.3.

Token authentication is on (``RAY_AUTH_MODE=token``, a token file of its own), as a careful user
runs a cluster. Started once per session (about 25 s on 2 busy cores) by ``ray start --block``
processes (``_raystart``), with free ports, a private ``--temp-dir`` per node (nothing in
/tmp/ray) and fast node-death detection (health checks every 300 ms); each node is stopped by its
pids when the last test of this directory ends (or the session fails), and checked to leave no
process behind. The worker simulates an H100 (its own ``AIVMM_SIMULATE``); each node has its own
aivmm cache, as separate machines would.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import pathlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from _raystart import RayNode, start_head, start_worker

REPO = pathlib.Path(__file__).resolve().parents[2]
H100 = REPO / "src/aivmm/devices/examples/h100-80gb.json"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def affine_model(path: pathlib.Path) -> pathlib.Path:
    """y = 2x + 1, x: FP32 [N, 4]: tiny, and its answer is known without any runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@dataclasses.dataclass
class RayCluster:
    root: pathlib.Path
    head: RayNode
    nodes: list[RayNode]  # the head first
    token: pathlib.Path

    @property
    def address(self) -> str:
        return self.head.address


# Finalizers, run last-in first-out exactly once: when the last test of this directory ends (so
# the rest of the suite does not share the machine with Ray) or, failing that, at session end.
_OPEN: list[Callable[[], Any]] = []


def _use_token(path: pathlib.Path | None) -> None:
    """Point this process's Ray at the cluster's token (None: back to no authentication), as
    RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH in the environment would at start."""
    import os

    from ray._raylet import AuthenticationTokenLoader, Config

    if path is None:
        os.environ.pop("RAY_AUTH_MODE", None)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    else:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    Config.initialize("")  # Ray reads the mode into its config once; re-read it, as ray.init does
    AuthenticationTokenLoader.instance().reset_cache()


def _declared(simulate: pathlib.Path) -> dict[str, float]:
    """What ``aivmm cluster resources`` prints for a node simulating ``simulate`` (run in-process)."""
    import contextlib
    import io
    import json

    from aivmm.cli import cluster

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cluster.run(argparse.Namespace(action="resources", simulate=str(simulate)))
    return dict(json.loads(out.getvalue()))


def _close_all() -> None:
    while _OPEN:
        fin = _OPEN.pop()
        with contextlib.suppress(Exception):
            fin()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    here = pathlib.Path(__file__).parent
    if nextitem is None or here not in nextitem.path.parents:
        _close_all()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray")
    import ray

    from aivmm.cluster._ray import connect

    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    root = pathlib.Path(tempfile.mkdtemp(prefix="aivmm-ray-"))
    nodes: list[RayNode] = []
    # Token authentication on, as a careful user runs a cluster: every node and client needs the token.
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def shutdown() -> None:
        ray.shutdown()
        _use_token(None)
        for node in reversed(nodes):  # workers first, the head (GCS) last
            node.stop()
        leftover = [p.pid for node in nodes for p in node.processes()]
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"Ray processes survived the cluster shutdown: {leftover}"

    _OPEN.append(shutdown)
    try:
        head = start_head(
            HEAD_IP,
            root / "head",
            system_config=FAST_FAILURE_DETECTION,
            env={**auth, "AIVMM_CACHE_DIR": str(root / "cache-head")},
            wait=False,
        )
        nodes.append(head)
        cluster = RayCluster(root, head, nodes, token)
        # The worker declares its devices as users do (ray start --resources "$(aivmm cluster
        # resources)"); the head's are published by the registry when it joins: both paths run.
        worker_env = {**auth, "AIVMM_SIMULATE": str(H100), "AIVMM_CACHE_DIR": str(root / "cache-w1")}
        nodes.append(start_worker(head, WORKER_IP, root / "w1", env=worker_env, resources=_declared(H100), wait=False))
        for node in nodes:  # started side by side: the worker's ray start waits for the head's GCS
            node.wait_started()
        _use_token(token)  # this process, and the servers and clients it starts
        connect(head.address, node_ip_address=None, namespace="aivmm")
        yield cluster
    finally:
        _close_all()


@pytest.fixture(scope="session")
def cluster_vmm(ray_cluster: RayCluster) -> Iterator[Any]:
    from aivmm.cluster import ClusterVMM

    vmm = ClusterVMM(replace_timeout_s=60.0, call_timeout_s=60.0, claim_timeout_s=3.0)
    _OPEN.append(vmm.close)
    try:
        yield vmm
    finally:
        _close_all()


@pytest.fixture(scope="session")
def affine(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return affine_model(tmp_path_factory.mktemp("cluster-models") / "affine.onnx")
