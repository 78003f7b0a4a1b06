"""The optimisation pipeline on real ONNX Runtime: inputs, passes, cache, accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _planner_models import embedding, mlp, strings

from aivmm.dtypes import Precision
from aivmm.errors import ConfigError, ModelLoadError
from aivmm.models import load
from aivmm.optimize import (
    DEFAULT_RELATIVE_TOLERANCE,
    Pass,
    apply,
    compare,
    index_bounds,
    input_plans,
    reference_outputs,
    sample_inputs,
    tolerance_for,
    transformed_path,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_generated_ids_stay_below_the_gather_table(tmp_path):
    path = embedding(tmp_path / "emb.onnx", vocab=50)
    assert index_bounds(path) == {"ids": 50}
    spec = load(path)
    plans = {p.name: p for p in input_plans(spec, batch=3)}
    assert plans["ids"].high == 50 and "Gather" in plans["ids"].reason
    assert plans["mask"].fill == 1 and "mask" in plans["mask"].reason  # a mask: ones, no padding
    feeds = sample_inputs(spec, batch=3, seed=1)
    assert feeds["ids"].shape == (3, 6) and feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 50
    assert feeds["ids"].max() > 2  # the bound was used, not the tiny default
    _run(path, feeds)  # valid for the real runtime


def test_sample_inputs_are_deterministic_and_batch_sized(tmp_path):
    spec = load(mlp(tmp_path / "m.onnx"))
    a, b = sample_inputs(spec, batch=4, seed=3), sample_inputs(spec, batch=4, seed=3)
    assert a["x"].shape == (4, 32) and np.array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], sample_inputs(spec, batch=4, seed=4)["x"])


def test_string_inputs_cannot_be_generated(tmp_path):
    spec = load(strings(tmp_path / "s.onnx"))
    with pytest.raises(ConfigError, match="string tensor"):
        sample_inputs(spec)


def test_fp16_keeps_the_fp32_signature_and_is_cached(tmp_path):
    src = mlp(tmp_path / "m.onnx")
    out = apply(src, Pass.FP16)
    assert out == transformed_path(src, Pass.FP16) and out.is_file()
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    mtime = out.stat().st_mtime_ns
    assert apply(src, Pass.FP16) == out and out.stat().st_mtime_ns == mtime  # reused, not recomputed
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)}
    ref = reference_outputs(src, feeds)
    report = compare(_run(out, feeds), ref, ["y"], tolerance_for(Precision.FP16, ref, None))
    assert report.ok and 0 < report.max_abs_error < report.tolerance


def test_int8_dynamic_and_static_quantise(tmp_path):
    src = mlp(tmp_path / "m.onnx")
    spec = load(src)
    dyn = load(apply(src, Pass.INT8_DYNAMIC))
    assert dyn.quantized_operators
    calib = [sample_inputs(spec, batch=4, seed=100 + s) for s in range(16)]
    static_path = apply(src, Pass.INT8_STATIC, calibration=calib)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(static_path)).graph.node}
    # different calibration data is a different cache entry
    assert transformed_path(src, Pass.INT8_STATIC, calibration=calib[:2]) != static_path
    feeds = sample_inputs(spec, batch=2)
    ref = reference_outputs(src, feeds)
    for path in (dyn.source, static_path):
        report = compare(_run(path, feeds), ref, ["y"], tolerance_for(Precision.INT8, ref, None))
        assert report.ok, report


def test_static_quantisation_needs_calibration(tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        apply(mlp(tmp_path / "m.onnx"), Pass.INT8_STATIC)


def test_graph_pass_writes_an_equivalent_model(tmp_path):
    src = mlp(tmp_path / "m.onnx")
    out = apply(src, Pass.GRAPH_EXTENDED)
    feeds = {"x": np.ones((1, 32), np.float32)}
    np.testing.assert_allclose(_run(out, feeds)[0], _run(src, feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_broken_model_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError):
        apply(bad, Pass.GRAPH_BASIC)
    assert not list((tmp_path / "cache").rglob("*.tmp.onnx"))  # no half-written file left behind


def test_compare_measures_the_error_and_catches_nan():
    ref = [np.array([1.0, 2.0, 3.0], np.float32)]
    assert compare([ref[0] + 0.5], ref, ["y"], 0.1).max_abs_error == pytest.approx(0.5)
    assert not compare([ref[0] + 0.5], ref, ["y"], 0.1).ok
    assert compare([ref[0] + 0.05], ref, ["y"], 0.1).ok
    nan = compare([np.array([1.0, np.nan, 3.0])], ref, ["y"], 10.0)
    assert not nan.ok and nan.max_abs_error == float("inf")
    assert not compare([np.zeros(2)], ref, ["y"], 10.0).ok  # shape mismatch


def test_default_tolerance_scales_with_the_output():
    small = tolerance_for(Precision.FP16, [np.array([0.5])], None)
    big = tolerance_for(Precision.FP16, [np.array([300.0])], None)
    assert small == DEFAULT_RELATIVE_TOLERANCE[Precision.FP16]
    assert big == pytest.approx(300 * DEFAULT_RELATIVE_TOLERANCE[Precision.FP16])
    assert tolerance_for(Precision.INT8, [np.array([300.0])], 0.25) == 0.25  # the user's is absolute
