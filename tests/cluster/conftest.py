"""A real Ray cluster as users start it: ``ray start --head`` on 127.0.0.2, a worker on 127.0.0.3.

Started once per session (about 15 s) by ``ray start --block`` processes (``_raystart``), with
free ports, a private ``--temp-dir`` per node (nothing in /tmp/ray) and fast node-death detection
(health checks every 300 ms); each node is stopped by its pids when the last test of this
directory ends (or the session fails), and checked to leave no process behind. The worker
simulates an H100 (its own ``AIVMM_SIMULATE``); each node has its own aivmm cache, as separate
machines would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
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

    @property
    def address(self) -> str:
        return self.head.address

    def add_worker(self, ip: str, name: str, env: dict[str, str] | None = None) -> RayNode:
        node = start_worker(
            self.head, ip, self.root / name, env={"AIVMM_CACHE_DIR": str(self.root / f"cache-{name}"), **(env or {})}
        )
        self.nodes.append(node)
        return node


# Finalizers, run last-in first-out exactly once: when the last test of this directory ends (so
# the rest of the suite does not share the machine with Ray) or, failing that, at session end.
_OPEN: list[Callable[[], Any]] = []


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

    def shutdown() -> None:
        ray.shutdown()
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
            env={"AIVMM_CACHE_DIR": str(root / "cache-head")},
        )
        nodes.append(head)
        cluster = RayCluster(root, head, nodes)
        worker = start_worker(
            head, WORKER_IP, root / "w1", env={"AIVMM_SIMULATE": str(H100), "AIVMM_CACHE_DIR": str(root / "cache-w1")}
        )
        nodes.append(worker)
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
