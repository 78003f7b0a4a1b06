"""Sequence and optional values at the model boundary: the spec holds them, ONNX Runtime runs them
(lists in, lists out, None for an empty optional), other backends refuse them at planning with the
reason, and bad feeds get an InputError naming the input."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import aivmm  # noqa: E402
from aivmm.errors import InputError  # noqa: E402
from aivmm.models import ValueKind, load  # noqa: E402

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def insert_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """SequenceInsert then SequenceAt: a sequence input, a sequence output and a tensor output."""
    seq = helper.make_tensor_sequence_value_info
    graph = helper.make_graph(
        [helper.make_node("SequenceInsert", ["s", "t"], ["out"]), helper.make_node("SequenceLength", ["out"], ["n"])],
        "insert",
        [seq("s", F, ["n"]), helper.make_tensor_value_info("t", F, ["n"])],
        [seq("out", F, ["n"]), helper.make_tensor_value_info("n", I64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, tmp_path_factory.mktemp("containers") / "insert.onnx")


@pytest.fixture(scope="module")
def optional_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An optional sequence passed through (Identity takes optionals since opset 16)."""
    opt = helper.make_optional_type_proto(helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, [2])))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["o"], ["p"])],
        "opt",
        [helper.make_value_info("o", opt)],
        [helper.make_value_info("p", opt)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    return _save(model, tmp_path_factory.mktemp("containers") / "opt.onnx")


def test_the_spec_holds_sequences_and_optionals(insert_model: pathlib.Path, optional_model: pathlib.Path) -> None:
    spec = load(insert_model)
    s, t = spec.inputs
    assert (s.kind, t.kind, spec.outputs[0].kind) == (ValueKind.SEQUENCE, ValueKind.TENSOR, ValueKind.SEQUENCE)
    assert s.describe() == "s: seq(float32[n])" and s.to_json()["kind"] == "sequence"
    assert "kind" not in t.to_json()
    assert spec.batch_dim is None  # a list cannot be stacked with other requests
    (o,) = load(optional_model).inputs
    assert o.kind is ValueKind.OPTIONAL_SEQUENCE and o.describe() == "o: optional(seq(float32[2]))"


def test_measured_deploy_runs_on_onnxruntime_and_says_why_not_elsewhere(insert_model: pathlib.Path) -> None:
    vmm = aivmm.VMM()
    deployed = vmm.deploy(insert_model, measure=True)  # generated inputs: a list of two tensors for 's'
    try:
        assert deployed.plan.chosen.config.backend == "onnxruntime"
        others = {c.config.backend for c in deployed.plan.rejected} & {"openvino", "torch"}
        assert "openvino" in others
        for backend in others:
            reasons = [r.detail for c in deployed.plan.rejected if c.config.backend == backend for r in c.rejections]
            assert any(
                f"{backend} takes tensors only at the model boundary, not s: seq(float32[n])" in r for r in reasons
            ), reasons
        a, b = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
        out = deployed.execute({"s": [a], "t": b})
        assert isinstance(out["out"], list) and len(out["out"]) == 2
        np.testing.assert_array_equal(out["out"][1], b)
        assert int(out["n"]) == 2
        with pytest.raises(InputError, match=r"'s'.*is a sequence: pass a list of arrays"):
            deployed.execute({"s": a, "t": b})
        with pytest.raises(InputError, match=r"'s'.*dtype int64, expected float32"):
            deployed.execute({"s": [a.astype(np.int64)], "t": b})
        with pytest.raises(InputError, match=r"'s'.*not optional, got None"):
            deployed.execute({"s": None, "t": b})
    finally:
        deployed.close()


def test_an_empty_optional_is_none_both_ways(optional_model: pathlib.Path) -> None:
    vmm = aivmm.VMM()
    deployed = vmm.deploy(optional_model, measure=False)
    try:
        assert deployed.execute({"o": None})["p"] is None
        got = deployed.execute({"o": [np.ones(2, np.float32)]})["p"]
        assert isinstance(got, list) and got[0].tolist() == [1.0, 1.0]
        with pytest.raises(InputError, match=r"dimension 0 is 3, expected 2"):
            deployed.execute({"o": [np.ones(3, np.float32)]})
    finally:
        deployed.close()
