"""Recipes that make a model from another zoo model (int8 quantisation) or from the ONNX helper."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np


def _calibration(name: str, rounds: int = 4):  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import CalibrationDataReader

    import realzoo

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([realzoo.sample_inputs(name, seed=i) for i in range(rounds)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.feeds, None)

    return Reader()


def quantized(base: str, fmt: str) -> Callable[[pathlib.Path], dict[str, object]]:
    """int8 ``base`` by onnxruntime.quantization: ``qdq`` / ``qoperator`` (static), ``dynamic``."""

    def build(out: pathlib.Path) -> dict[str, object]:
        from onnxruntime import quantization as q

        import realzoo

        src = realzoo.path(base)
        prepared = out / "prepared.onnx"
        q.quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        target = str(out / "model.onnx")
        if fmt == "dynamic":
            q.quantize_dynamic(
                str(prepared), target, weight_type=q.QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"]
            )
        else:
            qformat = q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator
            q.quantize_static(
                str(prepared),
                target,
                _calibration(base),
                quant_format=qformat,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                per_channel=False,
            )
        prepared.unlink()
        return {"base": base, "format": fmt, "base_meta": realzoo.meta(base)}

    return build


def ort_fused(
    base: str, model_type: str, heads: int, hidden: int, multi_head: bool = False
) -> Callable[[pathlib.Path], dict[str, object]]:
    """``base`` through ONNX Runtime's transformer optimiser: fused Attention, SkipLayerNormalization,
    BiasGelu / FastGelu (com.microsoft), the form ORT's own tools ship BERT and GPT-2 in."""

    def build(out: pathlib.Path) -> dict[str, object]:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        import realzoo

        options = FusionOptions(model_type)
        options.use_multi_head_attention = multi_head  # MultiHeadAttention (Q, K, V given) instead of Attention
        optimized = optimize_model(
            str(realzoo.path(base)),
            model_type=model_type,
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,
            optimization_options=options,
        )
        optimized.save_model_to_file(str(out / "model.onnx"))
        return {"base": base, "fused": model_type, "multi_head": multi_head, "base_meta": realzoo.meta(base)}

    return build


def wheel_member(package: str, version: str, member: str) -> Callable[[pathlib.Path], dict[str, object]]:
    def build(out: pathlib.Path) -> dict[str, object]:
        from realzoo import _wheels

        return _wheels.extract(package, version, member, out)

    return build


def scan_rnn(out: pathlib.Path) -> dict[str, object]:
    """An Elman RNN as an ONNX ``Scan`` over time, the form tf2onnx emits for Keras RNN layers
    (torch.onnx never emits Scan). h_t = tanh(x_t W + h_{t-1} R + b), then a linear head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    feat, hidden, classes = 32, 64, 8
    w = numpy_helper.from_array((rng.standard_normal((feat, hidden)) * 0.1).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.1).astype(np.float32), "R")
    b = numpy_helper.from_array(np.zeros(hidden, np.float32), "B")
    head = numpy_helper.from_array((rng.standard_normal((hidden, classes)) * 0.1).astype(np.float32), "Head")
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
            helper.make_node("MatMul", ["h_prev", "R"], ["hr"]),
            helper.make_node("Add", ["xw", "hr"], ["s"]),
            helper.make_node("Add", ["s", "B"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_next"]),
            helper.make_node("Identity", ["h_next"], ["y_t"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["batch", feat]),
        ],
        [
            helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["batch", hidden]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Scan",
                ["h0", "x"],
                ["h_last", "ys"],
                body=body,
                num_scan_inputs=1,
                scan_input_axes=[1],
                scan_output_axes=[1],
            ),
            helper.make_node("MatMul", ["h_last", "Head"], ["logits"]),
        ],
        "scan_rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", feat]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", hidden]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("ys", TensorProto.FLOAT, ["batch", "time", hidden]),
        ],
        [w, r, b, head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return {"architecture": "Elman RNN as ONNX Scan", "feat": feat, "hidden": hidden, "classes": classes}
