"""KServe v2 REST inference bodies: JSON tensors and Triton's binary tensor data extension.

Request: a JSON header, optionally followed by raw tensor bytes; ``Inference-Header-Content-Length``
says where the JSON ends, each binary input carries ``parameters.binary_data_size`` and the
inputs' bytes follow in order. Binary inputs become numpy views of the body (no copy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import InputError
from aivmm.serve import _tensors as t
from aivmm.serve._errors import ProtocolError
from aivmm.serve._messages import InferRequest, InferResponse, RequestedOutput


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {value!r}") from None
    if not 0 < n <= body_length:
        raise ProtocolError(f"Inference-Header-Content-Length is {n} but the body has {body_length} bytes")
    return n


def load_json(raw: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(raw))
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"{what} nests too deeply") from None


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: 'parameters' must be an object, got {type(params).__name__}")
    return params


def decode_request(body: bytes | bytearray, header_length: int | None, model: str, version: str) -> InferRequest:
    """An :class:`InferRequest` from an HTTP infer body; binary tensors are views of ``body``
    (writable when ``body`` is a bytearray, as the server passes it)."""
    view = memoryview(body)
    end = len(body) if header_length is None else header_length
    head = load_json(view[:end], "the request body" if header_length is None else "the inference header")
    if not isinstance(head, dict):
        raise InputError(f"the inference request must be a JSON object, got {type(head).__name__}")
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("the inference request needs a non-empty 'inputs' list")
    pos = end
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, DType] = {}
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise InputError(f"inputs[{i}] must be an object, got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"inputs[{i}] needs a 'name' string")
        if name in arrays:
            raise InputError(f"input {name!r} appears twice")
        dtype = t.parse_datatype(item.get("datatype"), name)
        shape = t.parse_shape(item.get("shape"), name)
        params = _parameters(item, f"input {name!r}")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InputError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if header_length is None:
                raise ProtocolError(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if "data" in item:
                raise InputError(f"input {name!r} has both 'data' and binary_data_size")
            if pos + size > len(body):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(body) - pos} bytes left)"
                )
            arrays[name] = t.from_bytes(view[pos : pos + size], dtype, shape, name)
            pos += size
        elif "data" in item:
            arrays[name] = t.from_json(item["data"], dtype, shape, name)
        else:
            raise InputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        datatypes[name] = dtype
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} bytes after the last binary input: the sizes do not add up")
    req_params = _parameters(head, "the request")
    outputs = head.get("outputs", [])
    if not isinstance(outputs, list):
        raise InputError("'outputs' must be a list")
    requested = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InputError(f"outputs[{i}] must be an object with a 'name' string")
        params = _parameters(out, f"output {out['name']!r}")
        if "classification" in params:
            raise InputError(f"output {out['name']!r}: the classification extension is not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InputError(f"output {out['name']!r}: binary_data must be true or false")
        requested.append(RequestedOutput(out["name"], binary))
    rid = head.get("id", "")
    if not isinstance(rid, str):
        raise InputError(f"'id' must be a string, got {rid!r}")
    return InferRequest(model, version, arrays, datatypes, tuple(requested), rid, req_params)


def encode_response(resp: InferResponse) -> tuple[list[bytes | memoryview], int | None]:
    """Body chunks and the JSON header length (None when the body is plain JSON)."""
    outputs = []
    blobs: list[bytes | memoryview] = []
    for (name, arr), binary in zip(resp.outputs, resp.binary):
        entry: dict[str, Any] = {"name": name, "datatype": t.datatype_of(arr).kserve, "shape": list(arr.shape)}
        if binary:
            blob = t.to_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.to_json(arr)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version, "outputs": outputs}
    if resp.id:
        head["id"] = resp.id
    header = json.dumps(head, separators=(",", ":"), allow_nan=True).encode()
    if not blobs:
        return [header], None
    return [header, *blobs], len(header)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
