"""A repository config option re-plans a served model on its first real request's inputs."""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")

from _serve_models import scale  # noqa: E402
from _serve_process import running_server  # noqa: E402


def _replan_state(url: str) -> str:
    with urllib.request.urlopen(f"http://{url}/v2/aivmm/status", timeout=30) as r:
        (model,) = json.load(r)["models"]
    return str(model.get("replan", ""))


def test_replan_on_first_request_from_config_json(tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "repo"
    scale(repo / "double" / "1" / "model.onnx", 2.0)
    config = {"replan_on_first_request": True, "backend": "onnxruntime"}  # one runtime: a short re-plan
    (repo / "double" / "config.json").write_text(json.dumps(config))
    args = [
        "--model-repository",
        str(repo),
        "--load",
        "double",
        "--no-measure",
        "--grpc-port",
        "-1",
        "--metrics-port",
        "-1",
    ]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)  # a batch of 3: not the shape generated at load
    with running_server(args, tmp_path / "server.err") as server:
        assert _replan_state(server.http) == "waiting for the first request"
        client = tritonhttp.InferenceServerClient(server.http, connection_timeout=60, network_timeout=60)
        inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("y"), 2 * x)
        state = ""
        for _ in range(600):  # the re-plan measures in the background; bounded wait
            state = _replan_state(server.http)
            if state.startswith(("done", "failed")):
                break
            time.sleep(0.2)
        assert state.startswith("done: onnxruntime@cpu:0"), (state, server.stderr()[-3000:])
        np.testing.assert_array_equal(client.infer("double", [inp]).as_numpy("y"), 2 * x)  # serves after the move
