"""``aivmm serve --ray``: two servers sharing the cluster's models; a worker's raylet SIGKILLed under traffic.

Runs last in this directory (it kills the session cluster's worker node).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
from _raystart import wait_for

from aivmm.errors import ModelNotReadyError
from conftest import affine_model

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from _serve_process import running_server  # the e2e suite's launcher: one way to start servers

pytestmark = pytest.mark.slow

CLIENTS_PER_SERVER = 2
TRAFFIC_BEFORE_S = 1.5
TRAFFIC_AFTER_S = 3.0


def _repository(root: pathlib.Path, instances: int) -> pathlib.Path:
    affine_model(root / "affine" / "1" / "model.onnx")
    (root / "affine" / "config.json").write_text(json.dumps({"instances": instances}))
    return root


def _status(http: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http}/v2/aivmm/status", timeout=30) as r:
        return json.loads(r.read())


def _served(status: dict[str, Any]) -> dict[str, Any]:
    """The registry's entries of the repository's model (the server names them affine:<version>:<n>)."""
    return {k: v for k, v in status["vmm"]["models"].items() if k.startswith("affine:")}


def _traffic(url: str, stop: threading.Event, results: list[Any]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        i = 0
        while not stop.is_set() and i < 100_000:
            x = np.full((2, 4), i % 7, np.float32)
            inp = httpclient.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            t0 = time.monotonic()
            try:
                y = client.infer("affine", [inp]).as_numpy("y")
                results.append((t0, bool(np.array_equal(y, 2 * x + 1))))
            except Exception as exc:  # every answer is recorded: an error is a failed answer, not a lost one
                results.append((t0, exc))
            i += 1
    finally:
        client.close()


def test_two_servers_share_models_and_survive_a_worker_raylet_killed_under_traffic(
    ray_cluster: Any, cluster_vmm: Any, affine: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("tritonclient.http")
    worker = ray_cluster.nodes[1]
    label = f"node-{worker.node_id()[:8]}"
    repo = _repository(tmp_path / "repo", instances=2)  # one copy on each node
    common = [
        "--model-repository",
        str(repo),
        "--no-measure",
        "--grpc-port",
        "-1",
        "--metrics-port",
        "-1",
        "--request-timeout-s",
        "120",
    ]
    pinned = cluster_vmm.deploy(str(affine), name="affine-strict", device=f"{label}/cpu:0", strict=True, measure=False)
    env_b = {"RAY_ADDRESS": ray_cluster.address}
    with (
        running_server(["--ray", ray_cluster.address, *common], tmp_path / "a.log") as a,
        running_server(["--ray", *common], tmp_path / "b.log", env=env_b) as b,
    ):  # `--ray` = auto
        served_a, served_b = _served(_status(a.http)), _served(_status(b.http))
        assert "affine-strict" in _status(b.http)["vmm"]["models"]  # the servers see the Python client's model too
        ((name_a, entry_a),) = served_a.items()
        ((name_b, entry_b),) = served_b.items()
        assert name_a == name_b and entry_b["holders"] == 2  # B holds A's model: one placement, two servers
        assert {c["device"] for c in entry_a["copies"]} == {c["device"] for c in entry_b["copies"]}
        assert label in {c["node"] for c in entry_a["copies"]}

        stop = threading.Event()
        results: list[list[Any]] = [[] for _ in range(2 * CLIENTS_PER_SERVER)]
        urls = [a.http] * CLIENTS_PER_SERVER + [b.http] * CLIENTS_PER_SERVER
        threads = [threading.Thread(target=_traffic, args=(u, stop, r)) for u, r in zip(urls, results, strict=True)]
        for t in threads:
            t.start()
        try:
            time.sleep(TRAFFIC_BEFORE_S)
            killed_at = time.monotonic()
            os.kill(worker.pid_of("raylet"), signal.SIGKILL)  # the node dies as a machine would
            time.sleep(TRAFFIC_AFTER_S)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=180)
        assert not any(t.is_alive() for t in threads)  # nothing hangs

        answers = [a for r in results for a in r]
        failures = [r for _, r in answers if r is not True]
        after = [t0 for t0, r in answers if t0 > killed_at]
        assert after, "no request was sent after the node was killed"
        assert not failures, f"{len(failures)} of {len(answers)} requests failed: {failures[:3]}"

        status = _status(a.http)["vmm"]
        (entry,) = _served(_status(a.http)).values()
        assert label not in {c["node"] for c in entry["copies"]} and entry["copies"]
        assert [e["node"] for e in status["events"] if e["event"] == "node-lost"] == [label]
        print(f"{len(answers)} answered, {len(after)} after the kill, 0 failed; retries on A: {entry['retries']}")

    # A model strictly pinned to the lost node is answered with the reason, not left to time out.
    wait_for(lambda: pinned.failure, 30, "the pinned model's failure")
    start = time.monotonic()
    with pytest.raises(ModelNotReadyError, match="left the cluster"):
        pinned.execute({"x": np.ones((1, 4), np.float32)})
    assert time.monotonic() - start < 5
    cluster_vmm.unload("affine-strict")


def test_a_new_registry_takes_over_when_the_old_one_dies(cluster_vmm: Any, affine: pathlib.Path) -> None:
    import ray

    before = cluster_vmm.deploy(str(affine), name="affine-before", measure=False)
    claims = cluster_vmm.status()["claims"]
    assert claims
    ray.kill(ray.get_actor("aivmm-registry", namespace="aivmm"), no_restart=True)
    # The client notices at its next refresh and finds (or starts) a new registry, which starts
    # empty: the old model's handle closes, the old claims and the agents' old key are gone.
    wait_for(lambda: before.closed, 60, "the old registry's model to close")
    after = cluster_vmm.deploy(str(affine), name="affine-after", measure=False)
    try:
        np.testing.assert_array_equal(after.execute({"x": np.ones((1, 4), np.float32)})["y"], np.full((1, 4), 3.0))
        assert cluster_vmm.models() == ["affine-after"]
        assert cluster_vmm.status()["claims"] == [t.device for t in after.router.targets()]
    finally:
        cluster_vmm.unload("affine-after")
