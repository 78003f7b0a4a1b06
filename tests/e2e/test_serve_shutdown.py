"""SIGTERM drains in-flight work: requests already inside finish with 200, the process exits 0."""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")

from _serve_process import running_server  # noqa: E402


def test_sigterm_drains_in_flight_requests(model_repository: pathlib.Path, tmp_path: pathlib.Path) -> None:
    args = [
        "--model-repository",
        str(model_repository),
        "--load",
        "heavy",
        "--no-measure",
        "--grpc-port",
        "-1",
        "--metrics-port",
        "-1",
    ]
    heavy = np.ones((1024, 256), np.float32)

    def infer(url: str) -> int:
        c = tritonhttp.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
        inp = tritonhttp.InferInput("x", list(heavy.shape), "FP32")
        inp.set_data_from_numpy(heavy)
        return int(c.infer("heavy", [inp]).as_numpy("y").shape == (1024, 256)) and 200

    with running_server(args, tmp_path / "server.err") as server:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(infer, server.http) for _ in range(3)]
            deadline = time.monotonic() + 30  # bounded by time, not tries: a loaded CI machine is slow to admit
            while time.monotonic() < deadline:  # until all three are inside the model
                with urllib.request.urlopen(f"http://{server.http}/v2/aivmm/status", timeout=10) as r:
                    doc = json.load(r)
                if sum(m.get("inflight", 0) for m in doc["models"]) >= 3:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("requests never became in-flight")
            status = server.terminate(timeout=60)
            codes = [f.result(60) for f in futures]
        assert codes == [200, 200, 200]
        assert status == 0, server.stderr()
