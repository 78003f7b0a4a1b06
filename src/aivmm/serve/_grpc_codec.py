"""KServe v2 gRPC inference messages to and from :mod:`aivmm.serve._messages`.

Inputs arrive in ``raw_input_contents`` (what tritonclient sends) or in typed ``contents``;
outputs always go in ``raw_output_contents``, as Triton does, which every client reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import InputError
from aivmm.serve import _tensors as t
from aivmm.serve._messages import InferRequest, InferResponse, RequestedOutput

# Which typed-contents field carries each datatype (FP16 and BF16 only travel raw).
_CONTENTS = {
    DType.BOOL: "bool_contents",
    DType.INT8: "int_contents",
    DType.INT16: "int_contents",
    DType.INT32: "int_contents",
    DType.INT64: "int64_contents",
    DType.UINT8: "uint_contents",
    DType.UINT16: "uint_contents",
    DType.UINT32: "uint_contents",
    DType.UINT64: "uint64_contents",
    DType.FLOAT32: "fp32_contents",
    DType.FLOAT64: "fp64_contents",
    DType.STRING: "bytes_contents",
}


def parameter_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def set_parameter(p: Any, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def decode_request(msg: Any) -> InferRequest:
    if not msg.model_name:
        raise InputError("model_name is empty")
    if not msg.inputs:
        raise InputError("the inference request has no inputs")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InputError(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs: they must pair one to one")
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, DType] = {}
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        if not name:
            raise InputError(f"inputs[{i}] has no name")
        if name in arrays:
            raise InputError(f"input {name!r} appears twice")
        dtype = t.parse_datatype(tensor.datatype, name)
        shape = t.parse_shape(list(tensor.shape), name)
        if raw:
            if tensor.HasField("contents"):
                raise InputError(f"input {name!r} has both contents and raw_input_contents")
            # protobuf bytes are immutable: one copy into a writable buffer (some runtimes refuse
            # read-only inputs), the same single copy the HTTP path makes when it reads the body.
            arrays[name] = t.from_bytes(bytearray(raw[i]), dtype, shape, name)
        else:
            arrays[name] = _from_contents(tensor, dtype, shape)
        datatypes[name] = dtype
    outputs = []
    for out in msg.outputs:
        if "classification" in out.parameters:
            raise InputError(f"output {out.name!r}: the classification extension is not supported")
        outputs.append(RequestedOutput(out.name, True))
    params = {k: parameter_value(v) for k, v in msg.parameters.items()}
    return InferRequest(msg.model_name, msg.model_version, arrays, datatypes, tuple(outputs), msg.id, params)


def _from_contents(tensor: Any, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    field = _CONTENTS.get(dtype)
    if field is None:
        raise InputError(f"input {tensor.name!r}: {dtype.kserve} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InputError(
            f"input {tensor.name!r}: {len(values)} values in contents.{field} for shape {list(shape)} ({count})"
        )
    if dtype is DType.STRING:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    np_type = dtype.to_numpy()
    if np_type.kind in "iu" and count:
        info = np.iinfo(np_type)
        lo, hi = min(values), max(values)
        if lo < info.min or hi > info.max:
            raise InputError(f"input {tensor.name!r}: values [{lo}, {hi}] do not fit {dtype.kserve}")
    return np.array(values, dtype=np_type).reshape(shape)


def encode_response(resp: InferResponse, pb: Any) -> Any:
    msg = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id)
    for name, arr in resp.outputs:
        out = msg.outputs.add()
        out.name = name
        out.datatype = t.datatype_of(arr).kserve
        out.shape.extend(arr.shape)
        msg.raw_output_contents.append(bytes(t.to_bytes(arr)))
    return msg
