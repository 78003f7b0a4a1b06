"""ClusterVMM on a real `ray start` cluster: devices as Ray resources, placement, claims, measuring on the node."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from _raystart import wait_for

import aivmm
from aivmm.errors import ConfigError, DeviceNotFoundError, InputError, ResourceError
from conftest import WORKER_IP

pytestmark = pytest.mark.slow


def _worker_label(cluster_vmm: Any) -> str:
    return next(n["node"] for n in cluster_vmm.nodes() if n["endpoint"][0] == WORKER_IP)


def test_each_node_reports_its_devices_and_publishes_them_as_ray_resources(cluster_vmm: Any) -> None:
    import ray

    by_node: dict[str, list[str]] = {}
    for d in cluster_vmm.devices:
        node, local = d.id.split("/", 1)
        by_node.setdefault(node, []).append(local)
    assert len(by_node) == 2
    # Only the worker started with AIVMM_SIMULATE=h100 has the simulated GPU: discovery ran on each node.
    assert by_node[_worker_label(cluster_vmm)] == ["cpu:0", "nvidia:0"]
    assert all("cpu:0" in v for v in by_node.values())
    # Published when each node joined; Ray's cluster view catches up within its resource-report period.
    total = wait_for(lambda: (r := ray.cluster_resources()).get("aivmm/cpu") == 2.0 and r, 30, "aivmm resources")
    assert total.get("aivmm/nvidia_gpu") == 1.0 and total.get("aivmm/device/nvidia:0") == 1.0
    # The worker declared them at `ray start --resources "$(aivmm cluster resources)"`; the head's were published.
    assert {n["node"]: n["resources"] for n in cluster_vmm.nodes()} == {
        n["node"]: ("declared" if n["endpoint"][0] == WORKER_IP else "published") for n in cluster_vmm.nodes()
    }
    for node in cluster_vmm.nodes():  # each agent runs on the node it describes, its channel on that node's IP
        agent = ray.get_actor(f"aivmm-agent-{node['node_id']}", namespace="aivmm")
        info = ray.get(agent.describe.remote(), timeout=30)
        assert info["running_on"] == node["node_id"] and info["endpoint"][0] == node["endpoint"][0]


def test_replicas_span_nodes_and_requests_spread(cluster_vmm: Any, affine: pathlib.Path) -> None:
    model = cluster_vmm.deploy(str(affine), name="affine-span", replicas=2, measure=False)
    try:
        assert len({t.node for t in model.router.targets()}) == 2, model.stats()
        xs = [np.full((2, 4), i, np.float32) for i in range(24)]

        async def fire() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(model.execute_async({"x": x}) for x in xs)))

        for x, out in zip(xs, asyncio.run(fire()), strict=True):
            np.testing.assert_array_equal(out["y"], 2 * x + 1)
        targets = model.stats()["targets"]
        assert sum(t["served"] for t in targets) == 24 and all(t["served"] > 0 for t in targets)
        assert all(t["outstanding"] == 0 for t in targets)
        status = cluster_vmm.status()
        assert status["models"]["affine-span"]["replicas"] == 2
        assert set(status["claims"]) == {t.device for t in model.router.targets()}  # each device held in Ray
    finally:
        cluster_vmm.unload("affine-span")
    assert "affine-span" not in cluster_vmm.models()
    assert cluster_vmm.status()["claims"] == []  # the claims go with the last model on them


def test_bad_requests_get_aivmm_errors(cluster_vmm: Any, affine: pathlib.Path) -> None:
    with pytest.raises(DeviceNotFoundError, match="unknown device"):
        cluster_vmm.deploy(str(affine), name="affine-bad", device="node-00000000/cpu:0")
    model = cluster_vmm.deploy(str(affine), name="affine-bad", measure=False)
    try:
        with pytest.raises(InputError):
            model.execute({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(ConfigError, match="output must be 'numpy'"):
            model.execute({"x": np.zeros((2, 4), np.float32)}, output="native")
        with pytest.raises(ConfigError, match="other content or settings"):
            cluster_vmm.deploy(str(affine), name="affine-bad", replicas=2, measure=False)
        # The same DeployOptions as a local VMM, refused (never dropped) where a cluster cannot honour them.
        same = cluster_vmm.deploy(str(affine), options=aivmm.DeployOptions(name="affine-bad", measure=False))
        assert same is model
        with pytest.raises(ConfigError, match=r"does not take \['fast_start'\]"):
            cluster_vmm.deploy(str(affine), options=aivmm.DeployOptions(name="affine-bad", fast_start=True))
    finally:
        cluster_vmm.unload("affine-bad")


def test_concurrent_deploys_of_one_name_make_one_placement(cluster_vmm: Any, affine: pathlib.Path) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(cluster_vmm.deploy, str(affine), name="affine-twice", measure=False) for _ in range(2)]
        models = [f.result(timeout=120) for f in futures]
    try:
        assert models[0] is models[1]  # one handle, one placement: the second waited for the first
        (entry,) = [e for n, e in cluster_vmm.status()["models"].items() if n == "affine-twice"]
        assert len(entry["copies"]) == 1
    finally:
        cluster_vmm.unload("affine-twice")


def test_a_device_in_use_is_held_in_ray_and_other_work_holding_one_keeps_aivmm_off(
    cluster_vmm: Any, affine: pathlib.Path
) -> None:
    import ray
    from ray.exceptions import GetTimeoutError

    worker = _worker_label(cluster_vmm)
    gpu = f"{worker}/nvidia:0"
    model = cluster_vmm.deploy(str(affine), name="affine-gpu", device=gpu, strict=True, measure=False)
    try:
        assert model.plan.chosen.config.device == gpu
        np.testing.assert_array_equal(model.execute({"x": np.ones((1, 4), np.float32)})["y"], np.full((1, 4), 3.0))
        # Other Ray work asking for that device waits: aivmm holds it.
        probe = ray.remote(lambda: "ran").options(num_cpus=0, resources={"aivmm/device/nvidia:0": 1}).remote()
        with pytest.raises(GetTimeoutError):
            ray.get(probe, timeout=1.5)
    finally:
        cluster_vmm.unload("affine-gpu")
    assert ray.get(probe, timeout=30) == "ran"  # released with the model

    # The other way round: Ray work holds the worker's CPU device; aivmm must not double-book it.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = next(n["node_id"] for n in cluster_vmm.nodes() if n["node"] == worker)
    hog = (
        ray.remote(type("Hog", (), {"ping": lambda self: 1}))
        .options(
            num_cpus=0,
            resources={"aivmm/device/cpu:0": 1},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote()
    )
    ray.get(hog.ping.remote(), timeout=30)
    try:
        with pytest.raises(ResourceError, match="held by other Ray work"):
            cluster_vmm.deploy(str(affine), name="affine-cpu", device=f"{worker}/cpu:0", strict=True, measure=False)
        assert "affine-cpu" not in cluster_vmm.models()
    finally:
        ray.kill(hog)


def test_measurement_runs_on_the_node_and_is_cached_there(
    ray_cluster: Any, cluster_vmm: Any, affine: pathlib.Path
) -> None:
    worker = _worker_label(cluster_vmm)
    cache = str(ray_cluster.root / "cache-w1")
    loads = []
    for _ in range(2):
        model = cluster_vmm.deploy(str(affine), name="affine-measured", device=f"{worker}/cpu:0", measure=True)
        try:
            (copy,) = cluster_vmm.status()["models"]["affine-measured"]["copies"]
            loads.append(copy["load"])
            np.testing.assert_array_equal(model.execute({"x": np.ones((1, 4), np.float32)})["y"], np.full((1, 4), 3))
        finally:
            cluster_vmm.unload("affine-measured")
    first, second = loads
    assert first["measured"] and first["latency_ms_measured"] is not None and not first["cache_hit"]
    assert first["cache_dir"] == cache and os.listdir(cache)  # the worker's own cache, not this process's
    assert second["cache_hit"]  # the second deploy reuses the worker's measurement


def test_a_second_client_in_another_process_sees_and_routes_to_the_same_model(
    ray_cluster: Any, cluster_vmm: Any, affine: pathlib.Path
) -> None:
    model = cluster_vmm.deploy(str(affine), name="affine-shared", replicas=2, measure=False)
    try:
        code = textwrap.dedent("""
            import json, numpy as np
            from aivmm.cluster import ClusterVMM
            import ray
            # RAY_ADDRESS, as Ray users set it; attached to the worker's raylet, as a client on that machine
            with ClusterVMM("auto", node_ip_address="127.0.0.3") as vmm:
                m = vmm.get("affine-shared")
                y = m.execute({"x": np.full((1, 4), 5, np.float32)})["y"]
                print(json.dumps({"y": y.tolist(), "models": vmm.models(),
                                  "node": ray.get_runtime_context().get_node_id(),
                                  "targets": sorted(t.device for t in m.router.targets())}))
        """)
        env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        import json

        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["y"] == [[11.0] * 4]
        assert doc["node"] == ray_cluster.nodes[1].node_id()  # it joined through the worker node
        assert "affine-shared" in doc["models"]
        assert doc["targets"] == sorted(t.device for t in model.router.targets())
        assert "affine-shared" in cluster_vmm.models()  # the other client's exit released nothing of ours
    finally:
        cluster_vmm.unload("affine-shared")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run(
        [sys.executable, "-m", "aivmm", *args], capture_output=True, text=True, timeout=120, env={**clean, **env}
    )


def test_joining_without_the_token_or_with_a_wrong_one_says_so_at_once(ray_cluster: Any) -> None:
    address = ray_cluster.address
    none = _cli(["cluster", "status", "--ray", address], {})
    assert none.returncode != 0
    assert "requires token authentication and this process sent no token" in none.stderr, none.stderr[-2000:]
    wrong = _cli(["cluster", "status", "--ray", address], {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode != 0 and "rejected this process's token" in wrong.stderr, wrong.stderr[-2000:]
    ok = _cli(
        ["cluster", "status", "--ray", address, "--json"],
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_cluster.token)},
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    import json

    assert len(json.loads(ok.stdout)["nodes"]) == 2
