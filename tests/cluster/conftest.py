"""A real local Ray cluster on loopback: a head with the real CPU and a node simulating an H100.

Started once per session (about 10 s), shut down at the end, and checked to leave no Ray process.
Node deaths are detected fast (health checks every 300 ms) so a removed node is noticed in ~1 s.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
H100 = REPO / "src/aivmm/devices/examples/h100-80gb.json"
FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}
NODE_ARGS: dict[str, Any] = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 80 << 20}


def affine_model(path: pathlib.Path) -> pathlib.Path:
    """y = 2x + 1, x: FP32 [N, 4]: tiny, and its answer is known without any runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ray_processes(session_dir: str) -> list[Any]:
    """Processes of this cluster (raylet, GCS, workers): their command lines name its session dir."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(session_dir in part for part in proc.info["cmdline"] or ()):
                out.append(proc)
    return out


# Finalizers of the cluster and the ClusterVMM, run last-in first-out exactly once: when the last
# test of this directory ends (so the rest of the suite does not share the machine with Ray) or,
# failing that, at the end of the session.
_OPEN: list[Callable[[], None]] = []


def _close_all() -> None:
    while _OPEN:
        _OPEN.pop()()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    here = pathlib.Path(__file__).parent
    if nextitem is None or here not in nextitem.path.parents:
        _close_all()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    from aivmm.cluster._ray import connect

    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
    session_dir = cluster.head_node.get_session_dir_path()

    def shutdown() -> None:
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 20
        while ray_processes(session_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = ray_processes(session_dir)
        for proc in left:  # only this cluster's own processes, by pid
            with contextlib.suppress(Exception):
                proc.kill()
        assert not left, f"Ray processes survived the cluster shutdown: {[p.pid for p in left]}"

    _OPEN.append(shutdown)
    try:
        cluster.add_node(**NODE_ARGS, env_vars={"AIVMM_SIMULATE": str(H100)})
        cluster.wait_for_nodes(timeout=60)
        connect(cluster.address, node_ip_address="127.0.0.1", namespace="aivmm-tests")
        yield cluster
    finally:
        _close_all()


@pytest.fixture(scope="session")
def cluster_vmm(ray_cluster: Any) -> Iterator[Any]:
    from aivmm.cluster import ClusterVMM

    vmm = ClusterVMM(namespace="aivmm-tests", replace_timeout_s=60.0, call_timeout_s=60.0)
    _OPEN.append(vmm.close)
    try:
        yield vmm
    finally:
        _close_all()


@pytest.fixture(scope="session")
def affine(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return affine_model(tmp_path_factory.mktemp("cluster-models") / "affine.onnx")
