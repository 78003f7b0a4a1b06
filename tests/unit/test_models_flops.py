"""FLOPs, MACs, peak activation memory and graph facts, each checked against an independent count
computed here by formula."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aivmm.models import ModelSpec, load  # noqa: E402

F = TensorProto.FLOAT


def _save(
    tmp_path: pathlib.Path,
    nodes: list,
    inputs: list,
    outputs: list,
    inits: list | None = None,
    opset: int = 17,
    extra_opsets: list | None = None,
    name: str = "m",
) -> pathlib.Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *(extra_opsets or [])])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _w(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(dtype), name)


def _vi(name: str, shape: list, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _one(
    tmp_path: pathlib.Path,
    node: onnx.NodeProto,
    inputs: list,
    outputs: list,
    inits: list | None = None,
    shapes: dict | None = None,
) -> ModelSpec:
    return load(_save(tmp_path, [node], inputs, outputs, inits), shapes=shapes)


def test_conv_counts_macs_per_output_element_and_bias(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    spec = _one(
        tmp_path,
        node,
        [_vi("x", ["batch", 3, 32, 32])],
        [_vi("y", ["batch", 16, 32, 32])],
        [_w("w", (16, 3, 3, 3)), _w("b", (16,))],
        shapes={"x": (4, 3, 32, 32)},
    )
    macs = 4 * 16 * 32 * 32 * (3 * 3 * 3)
    assert spec.macs == macs
    assert spec.flops == 2 * macs + 4 * 16 * 32 * 32
    assert spec.per_operator_flops["Conv"] == spec.flops
    assert spec.parameters == 16 * 27 + 16
    assert spec.shapes_used == {"x": (4, 3, 32, 32)}


def test_grouped_strided_conv(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    spec = _one(tmp_path, node, [_vi("x", [1, 8, 16, 16])], [_vi("y", [1, 8, 8, 8])], [_w("w", (8, 1, 3, 3))])
    assert spec.macs == 8 * 8 * 8 * 9  # depthwise: one input channel per output channel
    assert spec.flops == 2 * spec.macs


def test_conv_transpose(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    spec = _one(tmp_path, node, [_vi("x", [2, 8, 8, 8])], [_vi("y", [2, 4, 17, 17])], [_w("w", (8, 4, 3, 3))])
    assert spec.macs == 2 * 8 * 8 * 8 * 4 * 9


def test_gemm_with_bias_and_transposed_weight(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    spec = _one(
        tmp_path,
        node,
        [_vi("a", ["batch", 64])],
        [_vi("y", ["batch", 128])],
        [_w("w", (128, 64)), _w("c", (128,))],
        shapes={"a": (8, 64)},
    )
    assert spec.macs == 8 * 64 * 128
    assert spec.flops == 2 * 8 * 64 * 128 + 8 * 128


def test_batched_matmul_broadcasts(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    spec = _one(tmp_path, node, [_vi("a", [2, 4, 16, 32]), _vi("b", [4, 32, 8])], [_vi("y", [2, 4, 16, 8])])
    assert spec.macs == 2 * 4 * 16 * 8 * 32


def test_einsum_contraction(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    spec = _one(tmp_path, node, [_vi("a", [3, 5, 7]), _vi("b", [3, 7, 11])], [_vi("y", [3, 5, 11])])
    assert spec.macs == 3 * 5 * 7 * 11


def test_einsum_with_ellipsis_broadcast(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik")
    spec = _one(tmp_path, node, [_vi("a", [2, 3, 4, 5]), _vi("b", [3, 5, 6])], [_vi("y", [2, 3, 4, 6])])
    assert spec.macs == 2 * 3 * 4 * 5 * 6


@pytest.mark.parametrize(("op", "gates"), [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_ops(tmp_path: pathlib.Path, op: str, gates: int) -> None:
    seq, batch, features, hidden = 10, 2, 8, 16
    node = helper.make_node(op, ["x", "W", "R"], ["y"], hidden_size=hidden)
    spec = _one(
        tmp_path,
        node,
        [_vi("x", [seq, batch, features])],
        [_vi("y", [seq, 1, batch, hidden])],
        [_w("W", (1, gates * hidden, features)), _w("R", (1, gates * hidden, hidden))],
    )
    assert spec.macs == seq * batch * gates * hidden * (features + hidden)
    assert spec.flops >= 2 * spec.macs
    assert spec.parameters == gates * hidden * (features + hidden)


def test_attention_pattern_counts_qk_and_av(tmp_path: pathlib.Path) -> None:
    b, h, s, d = 2, 4, 32, 64
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    path = _save(
        tmp_path,
        nodes,
        [_vi("q", [b, h, s, d]), _vi("kt", [b, h, d, s]), _vi("v", [b, h, s, d])],
        [_vi("y", [b, h, s, d])],
    )
    spec = load(path)
    independent = 2 * (b * h * s * s * d) * 2  # QK^T and AV, 2 FLOPs per MAC
    assert spec.macs == 2 * b * h * s * s * d
    assert abs(spec.flops - independent) / independent < 0.05  # softmax adds a little
    assert spec.per_operator_flops["Softmax"] == 5 * b * h * s * s


@pytest.mark.parametrize(
    ("op", "attrs", "out_shape", "expected"),
    [
        ("Relu", {}, [2, 3, 4, 4], 96),
        ("Softmax", {"axis": -1}, [2, 3, 4, 4], 5 * 96),
        ("ReduceSum", {"keepdims": 1}, [2, 3, 4, 1], 96),
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [2, 3, 2, 2], 24 * 4),
        ("GlobalAveragePool", {}, [2, 3, 1, 1], 96),
    ],
)
def test_cheap_ops(tmp_path: pathlib.Path, op: str, attrs: dict, out_shape: list, expected: int) -> None:
    inputs = ["x"] if op != "ReduceSum" else ["x", "axes"]
    inits = [numpy_helper.from_array(np.array([3], np.int64), "axes")] if op == "ReduceSum" else []
    spec = _one(
        tmp_path, helper.make_node(op, inputs, ["y"], **attrs), [_vi("x", [2, 3, 4, 4])], [_vi("y", out_shape)], inits
    )
    assert spec.flops == expected


def test_normalisations(tmp_path: pathlib.Path) -> None:
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("LayerNormalization", ["bn", "g2", "b2"], ["y"], axis=-1),
    ]
    inits = [_w(n, (3,)) for n in ("g", "b", "m")] + [
        numpy_helper.from_array(np.ones(3, np.float32), "v"),
        _w("g2", (5,)),
        _w("b2", (5,)),
    ]
    spec = load(_save(tmp_path, nodes, [_vi("x", [2, 3, 5])], [_vi("y", [2, 3, 5])], inits))
    assert spec.per_operator_flops == {"LayerNormalization": 5 * 30, "BatchNormalization": 2 * 30}
    assert spec.parameters == 4 * 3 + 2 * 5


def test_dft_counts_n_log_n(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("DFT", ["x"], ["y"], axis=1, onesided=0)
    spec = _one(tmp_path, node, [_vi("x", [4, 64, 2])], [_vi("y", [4, 64, 2])])
    assert spec.flops == 4 * 5 * 64 * 6  # 4 complex transforms of length 64: 5 N log2 N each


def test_quantised_graph_is_reported_and_counted(tmp_path: pathlib.Path) -> None:
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["y"], to=F),
    ]
    inits = [
        numpy_helper.from_array(np.ones((16, 8), np.uint8), "w"),
        numpy_helper.from_array(np.array(0, np.uint8), "wz"),
    ]
    spec = load(_save(tmp_path, nodes, [_vi("x", ["batch", 16])], [_vi("y", ["batch", 8])], inits))
    assert spec.quantized_operators == ("DynamicQuantizeLinear", "MatMulInteger")
    assert spec.macs == 16 * 8
    assert spec.parameters == 128 and spec.parameter_bytes == 128  # uint8 weights; the scalar zero point is not


def test_peak_activation_liveness(tmp_path: pathlib.Path) -> None:
    # x feeds two branches that meet in an Add: x, a, b and y are live together at the Add.
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Sigmoid", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    spec = load(_save(tmp_path, nodes, [_vi("x", [1, 1000])], [_vi("z", [1, 1000])]))
    assert spec.peak_activation_bytes == 3 * 4000  # x is dead after the Sigmoid; a, b, y at the Add
    chain = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["z"])]
    assert (
        load(_save(tmp_path, chain, [_vi("x", [1, 1000])], [_vi("z", [1, 1000])], name="c")).peak_activation_bytes
        == 2 * 4000
    )


def test_peak_scales_with_bound_batch(tmp_path: pathlib.Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["z"])]
    path = _save(tmp_path, nodes, [_vi("x", ["batch", 250])], [_vi("z", ["batch", 250])])
    one, eight = load(path), load(path, shapes={"x": (8, 250)})
    assert eight.peak_activation_bytes == 8 * one.peak_activation_bytes == 8 * 2000
    assert any("batch" in w and "= 1" in w for w in one.warnings)  # the assumption is reported
    assert not any(w.startswith("assumed") for w in eight.warnings)


def test_if_counts_the_costlier_branch_and_recurses_into_histogram(tmp_path: pathlib.Path) -> None:
    cheap = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", [4, 4])])
    costly = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["e"])], "else", [], [_vi("e", [4, 4])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=cheap, else_branch=costly)
    spec = _one(tmp_path, node, [_vi("c", [], TensorProto.BOOL), _vi("x", [4, 4])], [_vi("y", [4, 4])])
    assert spec.control_flow == ("If",)
    assert spec.operators["MatMul"] == 1 and spec.operators["Relu"] == 1
    assert spec.macs == 64
    assert spec.batch_dim is None


def test_loop_multiplies_the_body_by_a_constant_trip_count(tmp_path: pathlib.Path) -> None:
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "w"], ["h2"]),
            helper.make_node("Tanh", ["h2"], ["h3"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond", [], TensorProto.BOOL), _vi("h", [1, 8])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("h3", [1, 8])],
    )
    node = helper.make_node("Loop", ["trips", "", "h0"], ["h_final"], body=body)
    inits = [numpy_helper.from_array(np.array(5, np.int64), "trips"), _w("w", (8, 8))]
    spec = _one(tmp_path, node, [_vi("h0", [1, 8])], [_vi("h_final", [1, 8])], inits)
    assert spec.macs == 5 * 64
    assert spec.control_flow == ("Loop",)
    assert spec.has_category(__import__("aivmm.models", fromlist=["Category"]).Category.RNN)


def _rank_if(x: str, then_op: str, else_op: str) -> list:
    """``if x.dim() == 2: then_op(x, x) else: else_op(x)``, the form torch exports shape checks in."""
    then_inputs = [x, x] if then_op in ("MatMul", "Add") else [x]
    else_inputs = [x, x] if else_op in ("MatMul", "Add") else [x]
    then = helper.make_graph([helper.make_node(then_op, then_inputs, ["t"])], "then", [], [_vi("t", ["n", 4])])
    other = helper.make_graph([helper.make_node(else_op, else_inputs, ["e"])], "else", [], [_vi("e", ["n", 4])])
    two = numpy_helper.from_array(np.array(2, np.int64), "two")
    return [
        helper.make_node("Shape", [x], ["shape"]),
        helper.make_node("Size", ["shape"], ["rank"]),
        helper.make_node("Constant", [], ["two"], value=two),
        helper.make_node("Equal", ["rank", "two"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]


def test_if_decided_by_input_shapes_counts_the_taken_branch(tmp_path: pathlib.Path) -> None:
    # rank 2 is known from the bound shape: the cheap Relu branch is never taken, the MatMul is.
    path = _save(tmp_path, _rank_if("x", "MatMul", "Relu"), [_vi("x", ["n", 4])], [_vi("y", ["n", 4])])
    spec = load(path, shapes={"x": (4, 4)})
    assert spec.macs == 64
    assert any("taken one counted" in w for w in spec.warnings)
    swapped = load(
        _save(tmp_path, _rank_if("x", "Add", "MatMul"), [_vi("x", ["n", 4])], [_vi("y", ["n", 4])], name="swapped"),
        shapes={"x": (4, 4)},
    )
    assert swapped.macs == 0 and swapped.flops == 16 + 1  # the taken Add (and the Equal), not the MatMul


def test_if_on_an_input_value_is_an_upper_bound_and_says_so(tmp_path: pathlib.Path) -> None:
    cheap = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", [4, 4])])
    costly = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["e"])], "else", [], [_vi("e", [4, 4])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=cheap, else_branch=costly)
    spec = _one(tmp_path, node, [_vi("c", [], TensorProto.BOOL), _vi("x", [4, 4])], [_vi("y", [4, 4])])
    assert any("upper bound" in w for w in spec.warnings)


def test_loop_trip_count_read_from_an_input_shape(tmp_path: pathlib.Path) -> None:
    # for t in range(x.shape[0]): h = tanh(h @ w) -- torch.jit.script's export of a time loop
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "w"], ["h2"]),
            helper.make_node("Tanh", ["h2"], ["h3"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond", [], TensorProto.BOOL), _vi("h", [1, 8])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("h3", [1, 8])],
    )
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["steps"]),
        helper.make_node("Loop", ["steps", "", "h0"], ["h_final"], body=body),
    ]
    path = _save(
        tmp_path, nodes, [_vi("x", ["time", 8]), _vi("h0", [1, 8])], [_vi("h_final", [1, 8])], [zero, _w("w", (8, 8))]
    )
    spec = load(path, shapes={"x": (7, 8)})
    assert spec.macs == 7 * 64
    assert not any(w.startswith("Loop:") for w in spec.warnings)


def test_tied_weight_stored_transposed_counts_once_equal_constants_do_not(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    wte = rng.standard_normal((100, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["wte", "ids"], ["h"]),
        helper.make_node("Add", ["h", "zeros_a"], ["h1"]),
        helper.make_node("Add", ["h1", "zeros_b"], ["h2"]),
        helper.make_node("MatMul", ["h2", "head"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(wte, "wte"),
        numpy_helper.from_array(np.ascontiguousarray(wte.T), "head"),  # the LM head, tied: wte transposed
        numpy_helper.from_array(np.zeros(16, np.float32), "zeros_a"),
        numpy_helper.from_array(np.zeros(16, np.float32), "zeros_b"),
    ]
    path = _save(tmp_path, nodes, [_vi("ids", [1, 4], TensorProto.INT64)], [_vi("logits", [1, 4, 100])], inits)
    spec = load(path)
    assert spec.parameters == 100 * 16 + 16 + 16  # the head once; two zero biases are two tensors


def test_dynamic_quantize_lstm_reads_its_transposed_weights(tmp_path: pathlib.Path) -> None:
    # ORT's quantised LSTM stores W [dirs, I, 4H] and R [dirs, H, 4H] (LSTM: [dirs, 4H, I], [dirs, 4H, H]);
    # its output's size comes from a stand-in LSTM, so the MatMul after it is counted too.
    seq, i, h = 10, 32, 16
    w = numpy_helper.from_array(np.ones((1, i, 4 * h), np.int8), "w")
    r = numpy_helper.from_array(np.ones((1, h, 4 * h), np.int8), "r")
    scale = numpy_helper.from_array(np.ones((1,), np.float32), "scale")
    zero = numpy_helper.from_array(np.zeros((1,), np.int8), "zero")
    head = _w("head", (h, 5))
    lstm = helper.make_node(
        "DynamicQuantizeLSTM",
        ["x", "w", "r", "", "", "", "", "", "scale", "zero", "scale", "zero"],
        ["y"],
        domain="com.microsoft",
        hidden_size=h,
    )
    squeeze = helper.make_node("Squeeze", ["y", "axis"], ["ys"])
    nodes = [lstm, squeeze, helper.make_node("MatMul", ["ys", "head"], ["o"])]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    path = _save(
        tmp_path,
        nodes,
        [_vi("x", [seq, 1, i])],
        [_vi("o", [seq, 1, 5])],
        [w, r, scale, zero, head, axis],
        extra_opsets=[helper.make_opsetid("com.microsoft", 1)],
    )
    spec = load(path)
    assert spec.per_operator_flops["DynamicQuantizeLSTM"] >= 2 * seq * 4 * h * (i + h)
    assert spec.macs == seq * 4 * h * (i + h) + seq * h * 5


def test_group_query_attention_attends_over_past_and_new_positions(tmp_path: pathlib.Path) -> None:
    # ORT GenAI's decoder op: 8 query heads share 2 KV heads; 12 cached + 4 new positions
    b, s_new, hq, hkv, d, past = 1, 4, 8, 2, 16, 12
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "past_k", "past_v", "seqlens", "total"],
        ["o", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=hq,
        kv_num_heads=hkv,
    )
    inputs = [
        _vi("q", [b, s_new, hq * d]),
        _vi("k", [b, s_new, hkv * d]),
        _vi("v", [b, s_new, hkv * d]),
        _vi("past_k", [b, hkv, past, d]),
        _vi("past_v", [b, hkv, past, d]),
        _vi("seqlens", [b], TensorProto.INT32),
        _vi("total", [], TensorProto.INT32),
    ]
    path = _save(
        tmp_path, [node], inputs, [_vi("o", [b, s_new, hq * d])], extra_opsets=[helper.make_opsetid("com.microsoft", 1)]
    )
    spec = load(path)
    assert spec.macs == 2 * b * hq * s_new * (past + s_new) * d  # QK^T and AV per query head


def test_unknown_custom_op_is_reported_not_guessed(tmp_path: pathlib.Path) -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("FancyOp", ["a"], ["y"], domain="com.example"),
    ]
    path = _save(
        tmp_path,
        nodes,
        [_vi("x", [2, 4])],
        [_vi("y", [2, 4])],
        [_w("w", (4, 4))],
        extra_opsets=[helper.make_opsetid("com.example", 1)],
    )
    spec = load(path)
    assert spec.custom_domains == ("com.example",)
    assert spec.macs == 2 * 4 * 4
    assert spec.operators == {"MatMul": 1, "com.example.FancyOp": 1}
    assert any("FancyOp" in w for w in spec.warnings)
    assert any("com.example" in w for w in spec.warnings)
    assert spec.opsets == {"ai.onnx": 17, "com.example": 1}


def test_large_constant_nodes_count_as_parameters(tmp_path: pathlib.Path) -> None:
    big = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones((10, 10), np.float32)))
    scale = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(2.0, np.float32)))
    shape = helper.make_node("Constant", [], ["shp"], value=numpy_helper.from_array(np.array([2, 50], np.int64)))
    nodes = [
        big,
        scale,
        shape,
        helper.make_node("Mul", ["x", "k"], ["a"]),
        helper.make_node("Mul", ["a", "s"], ["b"]),
        helper.make_node("Reshape", ["b", "shp"], ["y"]),
    ]
    spec = load(_save(tmp_path, nodes, [_vi("x", [10, 10])], [_vi("y", [2, 50])]))
    assert spec.parameters == 100 and spec.parameter_bytes == 400


def test_zoo_bert_flops_match_the_transformer_formula() -> None:
    from aivmm.models import zoo
    from aivmm.models.zoo._language import BERT

    c = BERT["tiny"]
    batch, s, h = 3, c.seq, c.hidden
    spec = load(zoo.build("bert-base"), shapes={"input_ids": (batch, s), "attention_mask": (batch, s)})
    per_layer = 4 * s * h * h + 2 * s * h * c.ffn + 2 * s * s * h  # projections, FFN, QK^T and AV
    macs = batch * (c.layers * per_layer + h * h)  # + the pooler
    assert spec.macs == macs
    assert abs(spec.flops - 2 * macs) / (2 * macs) < 0.05


def test_zoo_resnet_flops_match_the_conv_formula() -> None:
    from aivmm.models import zoo
    from aivmm.models.zoo._vision import EXPANSION, RESNET

    c = RESNET["tiny"]
    macs, size, cin = 0, c.image, 3
    macs += size * size * c.stem * cin * c.stem_kernel**2
    cin = c.stem
    for stage, (width, blocks) in enumerate(zip(c.widths, c.blocks)):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            out = size // stride
            cout = width * EXPANSION
            macs += size * size * cin * width + out * out * width * width * 9 + out * out * width * cout
            if block == 0:
                macs += out * out * cin * cout
            size, cin = out, cout
    macs += cin * c.classes
    spec = load(zoo.build("resnet50"), shapes={"input": (2, 3, c.image, c.image)})
    assert spec.macs == 2 * macs
    assert abs(spec.flops - 4 * macs) / (4 * macs) < 0.05
    assert math.isclose(spec.per_operator_flops["Conv"] / spec.flops, 0.97, abs_tol=0.03)


def test_constant_folded_nodes_are_not_activations(tmp_path: pathlib.Path) -> None:
    # Transpose(weight) is folded into a constant by runtimes: only x and y are activations.
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    spec = load(_save(tmp_path, nodes, [_vi("x", [1, 256])], [_vi("y", [1, 512])], [_w("w", (512, 256))]))
    assert spec.peak_activation_bytes == 4 * (256 + 512)
    assert spec.parameters == 512 * 256
