"""The real server in a subprocess, driven by the standard Triton clients (HTTP and gRPC) at their
default settings and by raw sockets for the malformed cases. One server for the module."""

from __future__ import annotations

import http.client
import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from _serve_process import RunningServer, running_server  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "s3cret"
AUTH_HTTP = {"Authorization": f"Bearer {TOKEN}"}
AUTH_GRPC = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(model_repository: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("log") / "server.err"
    args = [
        "--model-repository",
        str(model_repository),
        "--token",
        TOKEN,
        "--no-measure",
        "--max-inflight",
        "4",
        "--body-timeout-s",
        "2",
        "--request-timeout-s",
        "30",
    ]
    with running_server(args, log) as s:
        yield s
        assert s.proc.poll() is None, s.stderr()


@pytest.fixture(scope="module")
def hc(server: RunningServer) -> Any:
    return tritonhttp.InferenceServerClient(server.http)


@pytest.fixture(scope="module")
def gc(server: RunningServer) -> Any:
    return tritongrpc.InferenceServerClient(server.grpc)


def raw(
    server: RunningServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | bytes]:
    conn = http.client.HTTPConnection(*server.http.split(":"), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else {}
    except ValueError:
        return resp.status, data


def assert_healthy(server: RunningServer) -> None:
    assert raw(server, "GET", "/v2/health/ready")[0] == 200


# -- health, metadata ----------------------------------------------------------------------------
def test_health_and_server_metadata(hc: Any, gc: Any) -> None:
    for c in (hc, gc):
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("double") and c.is_model_ready("flat") and not c.is_model_ready("ghost")
    assert "binary_tensor_data" in hc.get_server_metadata()["extensions"]
    assert "model_repository" in list(gc.get_server_metadata().extensions)


def test_model_metadata_and_config(hc: Any, gc: Any) -> None:
    meta = hc.get_model_metadata("double")
    assert meta["versions"] == ["2"]  # Triton's default policy: the latest version only
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    gmeta = gc.get_model_metadata("mixed", as_json=True)
    assert [i["datatype"] for i in gmeta["inputs"]] == ["FP16", "BOOL", "INT64"]
    cfg = hc.get_model_config("double")
    assert cfg["max_batch_size"] == 8 and cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert gc.get_model_config("double").config.max_batch_size == 8


# -- inference -----------------------------------------------------------------------------------
X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_binary_and_json(hc: Any, binary: bool) -> None:
    inp = tritonhttp.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = tritonhttp.InferRequestedOutput("y", binary_data=binary)
    res = hc.infer("double", [inp], outputs=[out], request_id="r-1")
    np.testing.assert_array_equal(res.as_numpy("y"), X * 3)
    assert res.get_response()["id"] == "r-1" and res.get_response()["model_version"] == "2"


def test_http_infer_defaults_and_versions(hc: Any) -> None:
    inp = tritonhttp.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X)
    np.testing.assert_array_equal(hc.infer("double", [inp], model_version="2").as_numpy("y"), X * 3)
    np.testing.assert_array_equal(hc.infer("flat", [inp]).as_numpy("y"), X * 5)
    with pytest.raises(InferenceServerException, match="no loaded version 1"):
        hc.infer("double", [inp], model_version="1")


def test_grpc_infer(gc: Any) -> None:
    inp = tritongrpc.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X)
    res = gc.infer("double", [inp], outputs=[tritongrpc.InferRequestedOutput("y")], request_id="g-1")
    np.testing.assert_array_equal(res.as_numpy("y"), X * 3)
    assert res.get_response().id == "g-1"


def test_openvino_pinned_model_gets_writable_binary_inputs(hc: Any, gc: Any) -> None:
    """OpenVINO refuses read-only input arrays: binary tensors must arrive as writable views."""
    pytest.importorskip("openvino")
    for mod, c in ((tritonhttp, hc), (tritongrpc, gc)):
        inp = mod.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        np.testing.assert_array_equal(c.infer("ov", [inp]).as_numpy("y"), X * 7)


def _mixed_inputs(mod: Any, binary: bool = True) -> list[Any]:
    h = np.array([[1.5, -2.0]], np.float16)
    b = np.array([[True, False]])
    i = np.array([[7, -9]], np.int64)
    inputs = []
    for name, arr, dt in (("h", h, "FP16"), ("b", b, "BOOL"), ("i", i, "INT64")):
        x = mod.InferInput(name, list(arr.shape), dt)
        x.set_data_from_numpy(arr, **({"binary_data": binary} if mod is tritonhttp else {}))
        inputs.append(x)
    return inputs


@pytest.mark.parametrize("binary", [True, False])
def test_fp16_bool_int64_over_http(hc: Any, binary: bool) -> None:
    res = hc.infer(
        "mixed",
        _mixed_inputs(tritonhttp, binary),
        outputs=[tritonhttp.InferRequestedOutput(n, binary_data=binary) for n in ("h2", "nb", "i2")],
    )
    assert res.as_numpy("h2").dtype == np.float16 and res.as_numpy("h2").tolist() == [[3.0, -4.0]]
    assert res.as_numpy("nb").tolist() == [[False, True]]
    assert res.as_numpy("i2").tolist() == [[21, -27]]


def test_fp16_bool_int64_over_grpc_and_requested_outputs(gc: Any) -> None:
    res = gc.infer("mixed", _mixed_inputs(tritongrpc), outputs=[tritongrpc.InferRequestedOutput("nb")])
    assert res.as_numpy("nb").tolist() == [[False, True]]
    assert res.as_numpy("h2") is None  # only what was asked for


def test_grpc_streaming_infer(gc: Any) -> None:
    results: list[Any] = []
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        results.append(error or result)
        if len(results) == 3:
            done.set()

    gc.start_stream(callback=callback)
    try:
        for k in range(3):
            inp = tritongrpc.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.full((1, 4), k, np.float32))
            gc.async_stream_infer("flat" if k != 1 else "ghost", [inp], request_id=str(k))
        assert done.wait(30)
    finally:
        gc.stop_stream()
    ok = [r for r in results if not isinstance(r, InferenceServerException)]
    errs = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(ok) == 2 and len(errs) == 1 and "ghost" in str(errs[0])


# -- errors through the real clients ---------------------------------------------------------------
def test_errors_through_clients(hc: Any, gc: Any) -> None:
    for mod, c in ((tritonhttp, hc), (tritongrpc, gc)):
        inp = mod.InferInput("x", [2, 4], "FP64")
        inp.set_data_from_numpy(X.astype(np.float64))
        with pytest.raises(InferenceServerException, match="sent as FP64 but the model expects FP32") as ei:
            c.infer("double", [inp])
        assert ei.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        with pytest.raises(InferenceServerException, match="unknown model 'ghost'") as ei:
            c.infer("ghost", [inp])
        assert ei.value.status() in ("404", "StatusCode.NOT_FOUND")
        bad = mod.InferInput("nope", [2, 4], "FP32")
        bad.set_data_from_numpy(X)
        with pytest.raises(InferenceServerException, match=r"no input\(s\) \['nope'\]"):
            c.infer("double", [bad])


def test_grpc_message_over_the_limit(gc: Any, server: RunningServer) -> None:
    big = np.zeros((1, 17 << 20), np.float32)  # 68 MB, over the 64 MB default
    inp = tritongrpc.InferInput("x", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as ei:
        gc.infer("flat", [inp])
    assert ei.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert gc.is_server_ready()


# -- malformed requests, raw -------------------------------------------------------------------------
def _binary_body(header: dict[str, Any], payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
    (
        "wrong datatype string",
        json.dumps({"inputs": [{"name": "x", "datatype": "FLOAT32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode(),
        {},
        400,
        "unknown datatype",
    ),
    (
        "data length vs shape",
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3]}]}).encode(),
        {},
        400,
        "3 data elements",
    ),
    ("JSON array", b"[]", {}, 400, "JSON object"),
    (
        "binary header lies",
        *_binary_body(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 64}}]},
            b"\0" * 16,
        ),
        400,
        "runs past the end",
    ),
    ("header length lies", b'{"inputs": []}', {"Inference-Header-Content-Length": "9999"}, 400, "body has 14 bytes"),
    ("bad encoding", b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
]


@pytest.mark.parametrize(
    ("what", "body", "headers", "status", "message"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS]
)
def test_malformed_requests_get_4xx_with_a_message(
    server: RunningServer, what: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    code, answer = raw(server, "POST", "/v2/models/double/infer", body, headers)
    assert code == status and isinstance(answer, dict) and message in answer["error"], (what, answer)
    assert_healthy(server)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/ghost/infer", 404, "unknown model"),
        ("/v2/models/double/versions/7/infer", 404, "no loaded version 7"),
        ("/v2/models/double/versions/abc/infer", 404, "not a positive integer"),
        ("/v2/models/..%2F..%2Fetc/infer", 404, "no route"),  # decoded path: never reaches a model lookup
    ],
)
def test_unknown_models_and_versions(server: RunningServer, path: str, status: int, message: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    code, answer = raw(server, "POST", path, body.encode())
    assert code == status and message in answer["error"]


def test_method_and_route_errors(server: RunningServer) -> None:
    assert raw(server, "GET", "/v2/models/double/infer")[0] == 405
    assert raw(server, "GET", "/v3/whatever")[0] == 404


def test_gzip_body(server: RunningServer) -> None:
    import gzip

    body = gzip.compress(
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()
    )
    code, answer = raw(server, "POST", "/v2/models/flat/infer", body, {"Content-Encoding": "gzip"})
    assert code == 200 and answer["outputs"][0]["data"] == [5.0, 10.0, 15.0, 20.0]


def _socket(server: RunningServer) -> socket.socket:
    host, port = server.http.split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the whole response (headers and a Content-Length body)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_100mb_body_is_refused_at_once(server: RunningServer) -> None:
    with _socket(server) as s:
        s.sendall(b"POST /v2/models/flat/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
        s.sendall(b"\0" * 65536)  # the rest never comes: the answer must not wait for it
        status, data = _read_status(s)
    assert status == 413 and b"over the limit" in data
    assert_healthy(server)


def test_100mb_chunked_body_is_cut_off(server: RunningServer) -> None:
    chunk = b"\0" * (1 << 20)
    status = 0
    with _socket(server) as s:
        s.sendall(b"POST /v2/models/flat/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(100):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        status, _data = _read_status(s)
    assert status == 413
    assert_healthy(server)


def test_slow_client_gets_408_and_others_are_served(server: RunningServer, hc: Any) -> None:
    with _socket(server) as s:
        s.sendall(b'POST /v2/models/flat/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inp')
        inp = tritonhttp.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        assert hc.infer("flat", [inp]).as_numpy("y") is not None  # the stalled client blocks nobody
        status, data = _read_status(s)
    assert status == 408 and b"did not arrive" in data


# -- repository, token -------------------------------------------------------------------------------
def test_repository_index(hc: Any, gc: Any) -> None:
    rows = {(r["name"], r.get("version", "")): r["state"] for r in hc.get_model_repository_index()}
    assert rows[("double", "2")] == "READY" and rows[("flat", "1")] == "READY"
    grows = gc.get_model_repository_index(as_json=True)["models"]
    assert {r["name"] for r in grows} >= {"double", "flat", "heavy", "mixed"}


def test_control_needs_the_token(hc: Any, gc: Any, server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="Bearer") as ei:
        hc.unload_model("flat")
    assert ei.value.status() == "403"
    with pytest.raises(InferenceServerException, match="Bearer") as ei:
        gc.load_model("flat", headers={"authorization": "Bearer wrong"})
    assert ei.value.status() == "StatusCode.PERMISSION_DENIED"
    assert hc.is_model_ready("flat")


@pytest.mark.parametrize("name", ["..", "../x", "a%2Fb", "%2Fetc%2Fpasswd"])
def test_load_refuses_paths_outside_the_repository(server: RunningServer, name: str) -> None:
    code, answer = raw(server, "POST", f"/v2/repository/models/{name}/load", b"", AUTH_HTTP)
    assert code in (403, 404) and "error" in answer


def test_unload_and_load_http_and_grpc(hc: Any, gc: Any) -> None:
    hc.unload_model("flat", headers=AUTH_HTTP)
    assert not hc.is_model_ready("flat") and not gc.is_model_ready("flat")
    inp = tritonhttp.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="not loaded") as ei:
        hc.infer("flat", [inp])
    assert ei.value.status() == "503"
    gc.load_model("flat", headers=AUTH_GRPC)
    assert hc.is_model_ready("flat")
    hc.load_model("double", headers=AUTH_HTTP, config=json.dumps({"versions": "all"}))
    assert hc.get_model_metadata("double")["versions"] == ["1", "2"]
    np.testing.assert_array_equal(hc.infer("double", [inp], model_version="1").as_numpy("y"), X * 2)
    with pytest.raises(InferenceServerException, match="unknown key"):
        hc.load_model("double", headers=AUTH_HTTP, config=json.dumps({"bogus": 1}))
    assert hc.get_model_metadata("double")["versions"] == ["1", "2"]  # a failed reload keeps the old copy


def test_reload_under_traffic_drops_nothing(hc: Any, server: RunningServer) -> None:
    stop = threading.Event()
    answers: list[int] = []

    def client() -> None:
        c = tritonhttp.InferenceServerClient(server.http)
        inp = tritonhttp.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(X)
        while not stop.is_set() and len(answers) < 100_000:
            try:
                c.infer("flat", [inp])
                answers.append(200)
            except InferenceServerException as exc:
                answers.append(int(exc.status() or 0))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            hc.load_model("flat", headers=AUTH_HTTP)  # reload: new copy first, then the old one drains
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert answers and set(answers) == {200}, sorted(set(answers))


# -- load: in-flight work, overload ------------------------------------------------------------------
HEAVY = np.ones((1024, 256), np.float32)  # 1 MB in, about 4 GFLOP of work


def _heavy(c: Any) -> int:
    inp = tritonhttp.InferInput("x", list(HEAVY.shape), "FP32")
    inp.set_data_from_numpy(HEAVY)
    try:
        c.infer("heavy", [inp])
        return 200
    except InferenceServerException as exc:
        return int(exc.status() or 0)


def test_per_request_timeout(hc: Any, gc: Any, server: RunningServer) -> None:
    """Triton's per-request ``timeout`` (µs): a 1 ms budget for ~0.2 s of work is a 504 at once,
    and the abandoned work keeps its in-flight slot until it really ends (bounded backpressure)."""
    for mod, c in ((tritonhttp, hc), (tritongrpc, gc)):
        inp = mod.InferInput("x", list(HEAVY.shape), "FP32")
        inp.set_data_from_numpy(HEAVY)
        with pytest.raises(InferenceServerException, match="no result within the request timeout") as ei:
            c.infer("heavy", [inp], timeout=1000)
        assert ei.value.status() in ("504", "StatusCode.DEADLINE_EXCEEDED")
        _, doc = raw(server, "GET", "/v2/aivmm/status")
        assert sum(m["inflight"] for m in doc["models"] if m["name"] == "heavy") >= 1
        _wait_inflight_zero(server, "heavy")


def _wait_inflight_zero(server: RunningServer, model: str) -> None:
    for _ in range(1000):
        _, doc = raw(server, "GET", "/v2/aivmm/status")
        if sum(m.get("inflight", 0) for m in doc["models"] if m["name"] == model) == 0:
            return
        time.sleep(0.01)
    raise AssertionError("in-flight work never finished")


def test_grpc_overload_is_resource_exhausted(server: RunningServer) -> None:
    def one(_: int) -> str:
        c = tritongrpc.InferenceServerClient(server.grpc)
        inp = tritongrpc.InferInput("x", list(HEAVY.shape), "FP32")
        inp.set_data_from_numpy(HEAVY)
        try:
            c.infer("heavy", [inp])
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes and codes.count("OK") >= 4


def test_overload_is_answered_at_once(server: RunningServer) -> None:
    """--max-inflight 4: a burst of 16 gets some 429s at once, the rest served; nothing hangs."""
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: _heavy(tritonhttp.InferenceServerClient(server.http)), range(16)))
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 4 and codes.count(429) >= 1, codes


def _wait_inflight(server: RunningServer, model: str, at_least: int) -> None:
    for _ in range(400):
        _, doc = raw(server, "GET", "/v2/aivmm/status")
        if sum(m.get("inflight", 0) for m in doc["models"] if m["name"] == model) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError("requests never became in-flight")


def test_unload_waits_for_in_flight_requests(server: RunningServer, hc: Any) -> None:
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_heavy, tritonhttp.InferenceServerClient(server.http)) for _ in range(3)]
        _wait_inflight(server, "heavy", 3)
        hc.unload_model("heavy", headers=AUTH_HTTP)
        codes = [f.result(60) for f in futures]
    assert codes == [200, 200, 200]
    assert _heavy(hc) == 503
    hc.load_model("heavy", headers=AUTH_HTTP)
    assert _heavy(hc) == 200


# -- soak: mixed valid and invalid traffic, every request answered ------------------------------------
def test_soak_mixed_traffic_every_request_answered(server: RunningServer) -> None:
    valid = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    cases = [
        ("/v2/models/flat/infer", valid.encode(), {}, 200),
        ("/v2/models/double/infer", valid.encode(), {}, 200),
        ("/v2/models/flat/infer", b"{bad", {}, 400),
        ("/v2/models/ghost/infer", valid.encode(), {}, 404),
        ("/v2/models/flat/infer", valid.replace("FP32", "FP64").encode(), {}, 400),
        ("/v2/models/flat/infer", valid.encode(), {"Inference-Header-Content-Length": "3"}, 400),
    ]
    host, port = server.http.split(":")
    sent = [0] * 4
    answered = [0] * 4
    wrong: list[Any] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        end = time.monotonic() + 3.0
        i = k
        while time.monotonic() < end and sent[k] < 20_000:
            path, body, headers, want = cases[i % len(cases)]
            i += 1
            sent[k] += 1
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                wrong.append((path, repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                continue
            answered[k] += 1
            if resp.status != want or (want != 200 and b"error" not in payload):
                wrong.append((path, resp.status, payload[:200]))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(sent) > 50 and answered == sent, (sent, answered)
    assert not wrong, wrong[:5]
    assert_healthy(server)


# -- observability -----------------------------------------------------------------------------------
def test_metrics_and_status(server: RunningServer) -> None:
    conn = http.client.HTTPConnection(*server.metrics.split(":"), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for name in (
        "aivmm_requests_total",
        "aivmm_request_duration_seconds_bucket",
        "aivmm_request_stage_seconds",
        "aivmm_request_errors_total",
        "aivmm_model_loads_total",
        "aivmm_model_load_duration_seconds",
        "aivmm_device_memory_free_bytes",
        "aivmm_device_memory_used_bytes",
        "aivmm_model_residency",
        "aivmm_device_utilization_ratio",
        "aivmm_replica_loads_total",
    ):
        assert name in text, name
    assert 'aivmm_request_errors_total{error="InputError",model="double"}' in text
    # the runtime times each request's queue and compute stages (the server's "execute" spans both)
    for stage in ("queue", "compute", "execute"):
        assert f'aivmm_request_stage_seconds_count{{model="double",stage="{stage}"}}' in text, stage
    code, doc = raw(server, "GET", "/v2/aivmm/status")
    assert code == 200 and doc["server"]["ready"] is True
    assert {m["name"] for m in doc["models"]} >= {"double", "flat", "heavy", "mixed", "ov"}
    assert any(d["id"] == "cpu:0" for d in doc["devices"])
    code, plan = raw(server, "GET", "/v2/models/double/plan")
    assert code == 200 and plan["chosen"]["device"] == "cpu:0"


# -- CLI views of the running server -----------------------------------------------------------------
def test_status_and_top_cli(server: RunningServer, hc: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from aivmm.cli.main import main

    assert main(["status", "--url", f"http://{server.http}"]) == 0
    out = capsys.readouterr().out
    assert "cpu:0" in out and "double" in out and "READY" in out
    assert main(["status", "--url", server.http, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["ready"] is True
    inp = tritonhttp.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(X)
    for _ in range(5):
        hc.infer("flat", [inp])
    assert main(["top", "--url", server.http, "--count", "2", "--interval", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.count("devices") == 2 and "req/s" in out and "flat" in out
    assert main(["status", "--url", "http://127.0.0.1:1"]) == 2  # nothing listens: a clear error, no traceback
    assert "cannot read" in capsys.readouterr().err


def test_bench_cli_against_the_server(
    server: RunningServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aivmm.cli.main import main

    rc = main(
        [
            "bench",
            f"http://{server.http}",
            "--model",
            "flat",
            "--concurrency",
            "1,2",
            "--rate",
            "50",
            "--duration",
            "0.4",
            "--warmup",
            "0.1",
            "--json",
            "--plot",
            str(tmp_path),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in doc["results"]] == ["closed", "closed", "open"]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in doc["results"])
    assert (tmp_path / "latency_cdf.png").stat().st_size > 1000 and (tmp_path / "throughput.png").exists()
    rc = main(
        [
            "bench",
            f"grpc://{server.grpc}",
            "--model",
            "double",
            "--concurrency",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--json",
        ]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["results"][0]["requests"] > 0
