"""Tensor codecs of the server: JSON, Triton binary layout, gRPC contents; mutated bodies never crash."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aivmm.dtypes import DType
from aivmm.errors import InputError
from aivmm.serve import _http_codec as http
from aivmm.serve import _tensors as t
from aivmm.serve._errors import PayloadTooLargeError, ProtocolError
from aivmm.serve._messages import InferResponse

ALL_NUMERIC = [d for d in DType if d is not DType.STRING]


def _binary_body(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


@pytest.mark.parametrize("dtype", [d for d in ALL_NUMERIC if d is not DType.BFLOAT16])
def test_binary_round_trip_every_numeric_type(dtype: DType) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.integers(0, 2, (2, 3)) if dtype is DType.BOOL else rng.integers(0, 100, (2, 3))).astype(dtype.to_numpy())
    raw = bytes(t.to_bytes(arr))
    back = t.from_bytes(raw, dtype, (2, 3), "x")
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_binary_decode_is_a_view_of_the_body() -> None:
    arr = np.arange(6, dtype=np.float32)
    body, n = _binary_body(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}]},
        arr.tobytes(),
    )
    req = http.decode_request(body, n, "m", "")
    x = req.inputs["x"]
    assert x.shape == (2, 3) and np.array_equal(x.ravel(), arr)
    assert not x.flags.owndata  # no copy of the tensor bytes
    assert not x.flags.writeable  # a view of immutable bytes...
    writable = http.decode_request(bytearray(body), n, "m", "").inputs["x"]
    assert writable.flags.writeable and not writable.flags.owndata  # ...and of the server's bytearray


def test_bytes_layout_round_trip() -> None:
    items = [b"", b"hello", "wörld".encode(), bytes(range(256))]
    packed = t.pack_bytes(items)
    assert t.unpack_bytes(packed, "s") == items
    arr = t.from_bytes(packed, DType.STRING, (2, 2), "s")
    assert arr.shape == (2, 2) and arr[1, 1] == bytes(range(256))


def test_json_tensors_flat_and_nested_fp16_bool_bytes() -> None:
    body = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "a", "datatype": "FP16", "shape": [2, 2], "data": [[1.5, 2], [3, 4]]},
                {"name": "b", "datatype": "BOOL", "shape": [3], "data": [True, False, True]},
                {"name": "c", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]},
                {"name": "d", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
            ],
            "outputs": [{"name": "o", "parameters": {"binary_data": True}}],
            "parameters": {"binary_data_output": False},
        }
    ).encode()
    req = http.decode_request(body, None, "m", "3")
    assert req.inputs["a"].dtype == np.float16 and req.inputs["a"][0, 0] == 1.5
    assert req.inputs["b"].dtype == np.bool_ and req.inputs["b"].tolist() == [True, False, True]
    assert req.inputs["c"].tolist() == [b"x", b"yz"]
    assert req.inputs["d"].dtype == np.int8
    assert req.id == "r1" and req.version == "3" and req.outputs[0].binary is True and not req.binary_output


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}, "unknown datatype 'FLOAT'"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}, "1 data elements for shape"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "must be integers"),
        ({"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}, "do not fit INT8"),
        ({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}, "must be booleans"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}, "must be numbers"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "regular array"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}, "must be strings"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "neither 'data' nor"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "needs a 'name'"),
    ],
)
def test_bad_json_tensors_name_the_problem(item: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        http.decode_request(json.dumps({"inputs": [item]}).encode(), None, "m", "")


def test_malformed_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        http.decode_request(b"{nope", None, "m", "")
    with pytest.raises(InputError, match="JSON object"):
        http.decode_request(b"[1, 2]", None, "m", "")


def test_binary_header_that_lies_about_sizes() -> None:
    head = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}]}
    body, n = _binary_body(head, b"\0" * 8)
    with pytest.raises(ProtocolError, match="runs past the end"):
        http.decode_request(body, n, "m", "")
    body, n = _binary_body(head, b"\0" * 20)
    with pytest.raises(ProtocolError, match="do not add up"):
        http.decode_request(body, n, "m", "")
    head["inputs"][0]["parameters"]["binary_data_size"] = 12
    body, n = _binary_body(head, b"\0" * 12)
    with pytest.raises(InputError, match="expected 4 x 4 = 16 bytes"):
        http.decode_request(body, n, "m", "")
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length is 999"):
        http.parse_header_length("999", 10)
    with pytest.raises(ProtocolError, match="must be an integer"):
        http.parse_header_length("ten", 10)


def test_bytes_element_overrunning_its_data() -> None:
    with pytest.raises(InputError, match="overruns"):
        t.unpack_bytes(struct.pack("<I", 10) + b"abc", "s")
    with pytest.raises(InputError, match="length prefix"):
        t.unpack_bytes(b"\x01\x00", "s")


def test_absurd_shape_is_refused_before_allocation() -> None:
    with pytest.raises(PayloadTooLargeError):
        t.parse_shape([1 << 20, 1 << 20], "x")


def test_response_encoding_json_and_binary() -> None:
    y = np.arange(4, dtype=np.float32).reshape(2, 2)
    s = np.array([b"ab", b"c"], dtype=object)
    chunks, n = http.encode_response(InferResponse("m", "1", "id7", (("y", y), ("s", s)), (False, True)))
    body = b"".join(bytes(c) for c in chunks)
    head = json.loads(body[:n])
    assert head["id"] == "id7" and head["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]
    assert head["outputs"][1]["datatype"] == "BYTES"
    assert t.unpack_bytes(body[n:], "s") == [b"ab", b"c"]
    chunks, n = http.encode_response(InferResponse("m", "1", "", (("y", y),), (False,)))
    assert n is None and json.loads(chunks[0])["outputs"][0]["shape"] == [2, 2]


def test_bf16_from_json_rounds_to_nearest_even() -> None:
    arr = t.from_json([1.0, -2.5], DType.BFLOAT16, (2,), "x")
    assert arr.dtype == np.uint16 and arr.tolist() == [0x3F80, 0xC020]


# -- hypothesis: random and mutated bodies only ever raise InputError --------------------------------
def _valid_binary() -> tuple[bytes, int]:
    return _binary_body(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}},
                {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}},
            ],
            "outputs": [{"name": "y"}],
        },
        np.ones(4, np.float32).tobytes(),
        t.pack_bytes([b"abc", b""]),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256), st.one_of(st.none(), st.integers(-5, 300)))
def test_random_bodies_raise_only_input_errors(body: bytes, header_length: int | None) -> None:
    try:
        n = http.parse_header_length(None if header_length is None else str(header_length), len(body))
        http.decode_request(body, n, "m", "")
    except InputError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_bodies_raise_only_input_errors(data: st.DataObject) -> None:
    body, n = _valid_binary()
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos : pos + data.draw(st.integers(1, 8))]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        header = http.parse_header_length(str(n), len(buf))
        http.decode_request(bytes(buf), header, "m", "")
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "FP16", "UINT8", "bogus"]),
    st.lists(st.integers(-1, 4), max_size=3),
)
def test_random_json_tensors_raise_only_input_errors(data: object, datatype: str, shape: list[int]) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}).encode()
    with contextlib.suppress(InputError):
        http.decode_request(body, None, "m", "")
