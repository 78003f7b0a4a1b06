"""The hand-written .proto files match the wire contract of the standard Triton client."""

from __future__ import annotations

import numpy as np
import pytest

from aivmm.serve import _grpc_codec as codec
from aivmm.serve.proto import load
from aivmm.serve.proto._build import main as build_main


def _fields(desc) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.message_type is not None) for f in desc.fields}


def _compare(ours, theirs, path: str) -> None:
    mine, ref = _fields(ours), _fields(theirs)
    for name, (number, ftype, is_msg) in mine.items():
        assert name in ref, f"{path}.{name} is not in Triton's schema"
        assert ref[name][0] == number, f"{path}.{name}: field number {number} != Triton's {ref[name][0]}"
        if not is_msg:
            assert ref[name][1] == ftype, f"{path}.{name}: type {ftype} != Triton's {ref[name][1]}"
    for nested in ours.nested_types:
        if nested.name in theirs.nested_types_by_name:
            _compare(nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}")


def test_messages_match_tritonclient_field_for_field() -> None:
    triton_service = pytest.importorskip("tritonclient.grpc.service_pb2")
    triton_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    pb = load()
    theirs = {**triton_service.DESCRIPTOR.message_types_by_name, **triton_config.DESCRIPTOR.message_types_by_name}
    checked = 0
    for fd_name in ("grpc_service.proto", "model_config.proto"):
        fd = pb.pool.FindFileByName(fd_name)
        for name, desc in fd.message_types_by_name.items():
            if name == "Unused":
                continue
            assert name in theirs, f"{name} is not a Triton message"
            _compare(desc, theirs[name].DESCRIPTOR if hasattr(theirs[name], "DESCRIPTOR") else theirs[name], name)
            checked += 1
    assert checked >= 25
    ref_methods = {m.name: m for m in triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    for m in pb.service.methods:
        assert m.name in ref_methods
        assert m.input_type.full_name == ref_methods[m.name].input_type.full_name


def test_wire_compatible_with_tritonclient_messages() -> None:
    triton_service = pytest.importorskip("tritonclient.grpc.service_pb2")
    theirs = triton_service.ModelInferRequest(model_name="m", id="7")
    t = theirs.inputs.add(name="x", datatype="FP32", shape=[2])
    t.parameters["p"].int64_param = 3
    theirs.raw_input_contents.append(np.array([1, 2], np.float32).tobytes())
    ours = load().ModelInferRequest.FromString(theirs.SerializeToString())
    req = codec.decode_request(ours)
    assert req.id == "7" and req.inputs["x"].tolist() == [1.0, 2.0]


def test_both_protocol_definitions_coexist_in_one_process() -> None:
    pytest.importorskip("tritonclient.grpc")
    assert load().ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"


def test_committed_descriptors_are_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    assert build_main(["--check"]) == 0, "run: python -m aivmm.serve.proto._build"


def test_typed_contents_are_decoded_and_checked() -> None:
    pb = load()
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    assert codec.decode_request(msg).inputs["x"].tolist() == [1, -2, 3]
    t.contents.int_contents.append(4)
    from aivmm.errors import InputError

    with pytest.raises(InputError, match=r"4 values in contents\.int_contents for shape"):
        codec.decode_request(msg)
    t.contents.int_contents[:] = [1, 2, 300]
    with pytest.raises(InputError, match="do not fit INT8"):
        codec.decode_request(msg)
    t.contents.int_contents[:] = [1, 2, 3]
    h = msg.inputs.add(name="h", datatype="FP16", shape=[1])
    h.contents.fp32_contents.append(1.0)
    with pytest.raises(InputError, match="raw_input_contents"):
        codec.decode_request(msg)
