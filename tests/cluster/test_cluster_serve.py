"""``aivmm serve --ray``: the KServe v2 server on the cluster, through tritonclient, losing a node under traffic."""

from __future__ import annotations

import json
import pathlib
import sys
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest

from conftest import NODE_ARGS, affine_model

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from _serve_process import running_server  # the e2e suite's launcher: one way to start servers

pytestmark = pytest.mark.slow

CLIENTS = 4
TRAFFIC_BEFORE_S = 1.5
TRAFFIC_AFTER_S = 4.0


def _repository(root: pathlib.Path, instances: int) -> pathlib.Path:
    affine_model(root / "affine" / "1" / "model.onnx")
    (root / "affine" / "config.json").write_text(json.dumps({"instances": instances}))
    return root


def _status(http: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http}/v2/aivmm/status", timeout=30) as r:
        return json.loads(r.read())


def _traffic(url: str, stop: threading.Event, results: list[Any]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=120.0)
    try:
        i = 0
        while not stop.is_set() and i < 100_000:
            x = np.full((2, 4), i % 7, np.float32)
            inp = httpclient.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            try:
                y = client.infer("affine", [inp]).as_numpy("y")
                results.append(bool(np.array_equal(y, 2 * x + 1)))
            except Exception as exc:  # every answer is recorded: an error is a failed answer, not a lost one
                results.append(exc)
            i += 1
    finally:
        client.close()


def test_serve_on_the_cluster_survives_losing_a_node_under_traffic(ray_cluster: Any, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tritonclient.http")
    third = ray_cluster.add_node(**NODE_ARGS)
    ray_cluster.wait_for_nodes(timeout=60)
    repo = _repository(tmp_path / "repo", instances=4)  # one replica on each of the 4 devices of 3 nodes
    args = ["--ray", ray_cluster.address, "--model-repository", str(repo), "--no-measure",
            "--grpc-port", "-1", "--metrics-port", "-1", "--request-timeout-s", "120"]
    with running_server(args, tmp_path / "server.log") as server:
        before = _status(server.http)
        label = f"node-{third.node_id[:8]}"
        models = before["vmm"]["models"]
        (entry,) = models.values()
        nodes_before = {t["node"] for t in entry["targets"]}
        assert len(nodes_before) == 3, entry  # replicas span every node
        assert label in nodes_before

        stop = threading.Event()
        results: list[list[Any]] = [[] for _ in range(CLIENTS)]
        threads = [threading.Thread(target=_traffic, args=(server.http, stop, r)) for r in results]
        for t in threads:
            t.start()
        try:
            time.sleep(TRAFFIC_BEFORE_S)
            sent_before = sum(len(r) for r in results)
            ray_cluster.remove_node(third, allow_graceful=False)
            time.sleep(TRAFFIC_AFTER_S)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=180)
        assert not any(t.is_alive() for t in threads)

        answers = [a for r in results for a in r]
        failures = [a for a in answers if a is not True]
        assert sent_before > 0 and len(answers) > sent_before
        assert not failures, f"{len(failures)} of {len(answers)} requests failed: {failures[:3]}"

        after = _status(server.http)
        (entry,) = after["vmm"]["models"].values()
        print(f"{len(answers)} answered ({sent_before} before the loss), {entry['retries']} retried after it")
        assert label not in {t["node"] for t in entry["targets"]}
        lost = [e for e in after["vmm"]["events"] if e["event"] == "node-lost"]
        assert [e["node"] for e in lost] == [label]
        assert entry["replacements"] and entry["replacements"][0]["lost"] == label
        assert after["server"]["ready"]
