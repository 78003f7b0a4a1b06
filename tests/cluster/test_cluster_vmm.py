"""ClusterVMM on a real two-node Ray cluster: devices per node, placement across nodes, routing."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import numpy as np
import pytest

from aivmm.errors import ConfigError, DeviceNotFoundError, InputError, ModelNotReadyError
from conftest import NODE_ARGS

pytestmark = pytest.mark.slow


def test_each_node_reports_its_own_devices_under_cluster_ids(cluster_vmm: Any) -> None:
    import ray

    ids = [d.id for d in cluster_vmm.devices]
    assert len(ids) == len(set(ids))
    by_node: dict[str, list[str]] = {}
    for i in ids:
        node, local = i.split("/", 1)
        by_node.setdefault(node, []).append(local)
    assert len(by_node) == 2
    # Only the node started with AIVMM_SIMULATE=h100 has the simulated GPU: discovery ran on each node.
    assert sorted("nvidia:0" in v for v in by_node.values()) == [False, True]
    assert all("cpu:0" in v for v in by_node.values())
    for node in cluster_vmm._nodes.values():
        info = ray.get(node.agent.describe.remote(), timeout=30)
        assert info["running_on"] == node.node_id  # the agent is pinned to the node it describes


def test_replicas_span_nodes_and_answer_like_the_model(cluster_vmm: Any, affine: pathlib.Path) -> None:
    model = cluster_vmm.deploy(str(affine), name="affine-span", replicas=2, measure=False)
    try:
        nodes = {t.node for t in model.router.targets()}
        assert len(nodes) == 2, model.stats()
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        for _ in range(4):  # round-robin on ties: both nodes answer
            out = model.execute({"x": x})
            np.testing.assert_array_equal(out["y"], 2 * x + 1)
        assert all(t["served"] > 0 for t in model.stats()["targets"])
        assert cluster_vmm.status()["models"]["affine-span"]["replicas"] == 2
    finally:
        cluster_vmm.unload("affine-span")
    assert "affine-span" not in cluster_vmm.models()


def test_concurrent_requests_spread_and_all_return(cluster_vmm: Any, affine: pathlib.Path) -> None:
    model = cluster_vmm.deploy(str(affine), name="affine-load", replicas=2, measure=False)
    try:
        xs = [np.full((2, 4), i, np.float32) for i in range(24)]

        async def fire() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(model.execute_async({"x": x}) for x in xs)))

        outs = asyncio.run(fire())
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], 2 * x + 1)
        targets = model.stats()["targets"]
        assert sum(t["served"] for t in targets) == 24
        assert all(t["served"] > 0 for t in targets) and all(t["outstanding"] == 0 for t in targets)
    finally:
        cluster_vmm.unload("affine-load")


def test_bad_requests_get_aivmm_errors(cluster_vmm: Any, affine: pathlib.Path) -> None:
    with pytest.raises(DeviceNotFoundError, match="unknown device"):
        cluster_vmm.deploy(str(affine), name="affine-bad", device="node-00000000/cpu:0")
    model = cluster_vmm.deploy(str(affine), name="affine-bad", measure=False)
    try:
        with pytest.raises(InputError):
            model.execute({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(InputError):
            model.execute({"nope": np.zeros((2, 4), np.float32)})
        with pytest.raises(ConfigError, match="output must be 'numpy'"):
            model.execute({"x": np.zeros((2, 4), np.float32)}, output="native")
    finally:
        cluster_vmm.unload("affine-bad")


def test_pinned_device_on_a_remote_node_is_honoured(cluster_vmm: Any, affine: pathlib.Path) -> None:
    gpu = next(d.id for d in cluster_vmm.devices if d.id.endswith("/nvidia:0"))
    model = cluster_vmm.deploy(str(affine), name="affine-pin", device=gpu, strict=True, measure=False)
    try:
        assert [t.device for t in model.router.targets()] == [gpu]
        assert model.plan.chosen.config.device == gpu
        out = model.execute({"x": np.ones((1, 4), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 3, np.float32))
    finally:
        cluster_vmm.unload("affine-pin")


def _join(ray_cluster: Any, cluster_vmm: Any) -> tuple[Any, str]:
    """A fresh node, once the ClusterVMM's monitor has given it an agent (bounded wait)."""
    node = ray_cluster.add_node(**NODE_ARGS)
    ray_cluster.wait_for_nodes(timeout=60)
    label = f"node-{node.node_id[:8]}"
    deadline = time.monotonic() + 90
    while not any(d.id.startswith(label) for d in cluster_vmm.devices):
        assert time.monotonic() < deadline, f"{label} got no agent: {cluster_vmm.status()['skipped_nodes']}"
        time.sleep(0.2)
    return node, label


def _lose(ray_cluster: Any, cluster_vmm: Any, node: Any, label: str) -> None:
    """Kill the node; return once the ClusterVMM has noticed (its agent may answer for a moment after)."""
    ray_cluster.remove_node(node, allow_graceful=False)
    deadline = time.monotonic() + 90
    while label in {n["node"] for n in cluster_vmm.nodes()}:
        assert time.monotonic() < deadline, f"loss of {label} not noticed"
        time.sleep(0.1)


def test_a_model_whose_only_node_dies_is_re_placed_and_answers_again(
        ray_cluster: Any, cluster_vmm: Any, affine: pathlib.Path) -> None:
    node, label = _join(ray_cluster, cluster_vmm)
    model = cluster_vmm.deploy(str(affine), name="affine-move", device=f"{label}/cpu:0", measure=False)
    try:
        x = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(model.execute({"x": x})["y"], 2 * x + 1)
        _lose(ray_cluster, cluster_vmm, node, label)
        out = model.execute({"x": x})  # waits (bounded) for the re-placement if it is still loading
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
        stats = model.stats()
        assert [t["node"] for t in stats["targets"]] != [label]
        assert stats["replacements"][0]["lost"] == label
    finally:
        cluster_vmm.unload("affine-move")


def test_a_strictly_pinned_model_whose_node_dies_fails_with_the_reason(
        ray_cluster: Any, cluster_vmm: Any, affine: pathlib.Path) -> None:
    node, label = _join(ray_cluster, cluster_vmm)
    model = cluster_vmm.deploy(str(affine), name="affine-strict", device=f"{label}/cpu:0", strict=True, measure=False)
    try:
        _lose(ray_cluster, cluster_vmm, node, label)
        start = time.monotonic()
        with pytest.raises(ModelNotReadyError, match="left the cluster"):
            model.execute({"x": np.ones((1, 4), np.float32)})
        assert time.monotonic() - start < cluster_vmm.replace_timeout_s  # told why, not left to time out
    finally:
        cluster_vmm.unload("affine-strict")
