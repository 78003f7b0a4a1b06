"""FLOPs and MACs per ONNX operator, from inferred shapes.

Conventions (the usual ones, so figures compare with published numbers): a multiply-accumulate is
one MAC and two FLOPs; a bias add, an elementwise op or an activation costs one FLOP per output
element; transcendental functions are not weighted more than an add. Ops that only move data
(Reshape, Transpose, Gather, Concat, ...) cost nothing. An op missing from the tables is reported
by the caller as uncounted, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from aivmm.models._graph import ConstantValues

Shape = tuple[int, ...]
ShapeOf = Callable[[str], "Shape | None"]
Count = tuple[int, int]  # (flops, macs)


def numel(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _out(node: Any, shape_of: ShapeOf, index: int = 0) -> Shape | None:
    return shape_of(node.output[index]) if len(node.output) > index and node.output[index] else None


def _in(node: Any, shape_of: ShapeOf, index: int = 0) -> Shape | None:
    return shape_of(node.input[index]) if len(node.input) > index and node.input[index] else None


def _has_input(node: Any, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


class Unknown(Exception):
    """The shapes this op needs were not inferred."""


def _need(*shapes: Shape | None) -> None:
    if any(s is None for s in shapes):
        raise Unknown


def _conv(node: Any, shape_of: ShapeOf, w_index: int = 1, bias_index: int | None = 2) -> Count:
    w, y = _in(node, shape_of, w_index), _out(node, shape_of)
    _need(w, y)
    assert w is not None and y is not None
    # y: [N, Cout, *spatial]; w: [Cout, Cin/group, *kernel] -> each output element is Cin/g * k MACs.
    macs = numel(y) * numel(w[1:])
    bias = numel(y) if bias_index is not None and _has_input(node, bias_index) else 0
    return 2 * macs + bias, macs


def _conv_transpose(node: Any, shape_of: ShapeOf) -> Count:
    x, w, y = _in(node, shape_of, 0), _in(node, shape_of, 1), _out(node, shape_of)
    _need(x, w, y)
    assert x is not None and w is not None and y is not None
    # w: [Cin, Cout/group, *kernel]; every input element scatters into Cout/g * k outputs.
    macs = numel(x) * numel(w[1:])
    bias = numel(y) if _has_input(node, 2) else 0
    return 2 * macs + bias, macs


def _matmul_macs(a: Shape, b: Shape, y: Shape) -> int:
    k = a[-1] if len(a) >= 1 else 1
    return numel(y) * k


def _matmul(node: Any, shape_of: ShapeOf, a_index: int = 0, b_index: int = 1) -> Count:
    a, b, y = _in(node, shape_of, a_index), _in(node, shape_of, b_index), _out(node, shape_of)
    _need(a, b, y)
    assert a is not None and b is not None and y is not None
    macs = _matmul_macs(a, b, y)
    return 2 * macs, macs


def _gemm(node: Any, shape_of: ShapeOf, bias_index: int = 2) -> Count:
    a, y = _in(node, shape_of, 0), _out(node, shape_of)
    _need(a, y)
    assert a is not None and y is not None
    k = a[0] if attr(node, "transA", 0) else a[-1]
    macs = numel(y) * k
    bias = numel(y) if _has_input(node, bias_index) else 0
    return 2 * macs + bias, macs


def _einsum(node: Any, shape_of: ShapeOf) -> Count:
    raw = attr(node, "equation", b"")
    equation = (raw.decode() if isinstance(raw, bytes) else str(raw)).replace(" ", "")
    terms = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, name in zip(terms, node.input):
        shape = shape_of(name)
        _need(shape)
        assert shape is not None
        head, ellipsis, tail = term.partition("...")
        spread = len(shape) - len(head) - len(tail) if ellipsis else 0
        # Ellipsis dims are labelled by their distance from the right, so broadcast operands share them.
        labels = [*head, *(f"...{spread - i}" for i in range(spread)), *tail]
        for label, dim in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), dim)
    if len(terms) < 2:
        return numel(_out(node, shape_of)), 0
    # A contraction of n operands visits every combination of indices once, with n-1 multiplies.
    macs = math.prod(sizes.values()) * (len(terms) - 1)
    return 2 * macs, macs


def _recurrent(gates: int, transposed: bool = False) -> Callable[[Any, ShapeOf], Count]:
    """LSTM / GRU / RNN: W [dirs, gates*H, I], R [dirs, gates*H, H]; ``transposed`` for ORT's
    DynamicQuantizeLSTM, which stores W [dirs, I, 4H] and R [dirs, H, 4H]."""

    def count(node: Any, shape_of: ShapeOf) -> Count:
        x, w, r = _in(node, shape_of, 0), _in(node, shape_of, 1), _in(node, shape_of, 2)
        _need(x, w, r)
        assert x is not None and w is not None and r is not None
        layout = attr(node, "layout", 0)
        seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
        directions = w[0]
        hidden, input_size = (r[1], w[1]) if transposed else (r[-1], w[-1])
        # Per step and direction: gates x hidden x (input + hidden) MACs, plus the gate
        # nonlinearities and state updates (a few elementwise ops per hidden unit).
        macs = seq * batch * directions * gates * hidden * (input_size + hidden)
        elementwise = seq * batch * directions * hidden * (3 * gates)
        return 2 * macs + elementwise, macs

    return count


def _attention_fused(node: Any, shape_of: ShapeOf) -> Count:
    """com.microsoft Attention (QKV projection inside) and ONNX / MultiHeadAttention (Q, K, V given)."""
    if node.op_type in ("Attention", "QAttention") and node.domain == "com.microsoft":
        x, w = _in(node, shape_of, 0), _in(node, shape_of, 1)
        _need(x, w)
        assert x is not None and w is not None
        batch, seq, hidden = x[0], x[1], x[2]
        proj = batch * seq * hidden * w[-1]
        attn = 2 * batch * seq * seq * hidden  # QK^T and AV over all heads
        macs = proj + attn
        return 2 * macs + 5 * batch * seq * seq * int(attr(node, "num_heads", 1)), macs
    q, k = _in(node, shape_of, 0), _in(node, shape_of, 1)
    _need(q, k)
    assert q is not None and k is not None
    if len(q) == 4:  # [B, heads, S, d]
        batch, heads, s_q, d = q
        s_k = k[2]
        macs = 2 * batch * heads * s_q * s_k * d
        scores = batch * heads * s_q * s_k
    else:  # [B, S, hidden]
        batch, s_q, hidden = q
        s_k = k[1]
        macs = 2 * batch * s_q * s_k * hidden
        scores = batch * s_q * s_k * int(attr(node, "num_heads", attr(node, "q_num_heads", 1)) or 1)
    return 2 * macs + 5 * scores, macs


def _gqa(node: Any, shape_of: ShapeOf) -> Count:
    """com.microsoft GroupQueryAttention: query [B, S, Hq*d] (or packed QKV when key is absent),
    past key [B, Hkv, P, d]. Each query head attends over P + S positions (the past buffer's
    length bounds it: a shared buffer may hold fewer valid positions, so this is an upper bound)."""
    q = _in(node, shape_of, 0)
    _need(q)
    assert q is not None
    heads = int(attr(node, "num_heads", 1) or 1)
    kv_heads = int(attr(node, "kv_num_heads", heads) or heads)
    batch, s_q, width = q
    packed = not _has_input(node, 1)
    d = width // (heads + 2 * kv_heads) if packed else width // heads
    past = _in(node, shape_of, 3)
    s_k = (past[2] if past is not None and len(past) == 4 else 0) + s_q
    macs = 2 * batch * heads * s_q * s_k * d  # QK^T and AV
    return 2 * macs + 5 * batch * heads * s_q * s_k, macs


def _matmul_nbits(node: Any, shape_of: ShapeOf) -> Count:
    """com.microsoft MatMulNBits: A [..., K] times a packed low-bit [N, K] weight."""
    a, y = _in(node, shape_of, 0), _out(node, shape_of)
    _need(a, y)
    assert a is not None and y is not None
    macs = numel(y) * a[-1]
    return 2 * macs, macs


def _per_output(factor: float) -> Callable[[Any, ShapeOf], Count]:
    def count(node: Any, shape_of: ShapeOf) -> Count:
        y = _out(node, shape_of)
        _need(y)
        return int(factor * numel(y)), 0

    return count


def _per_input(factor: float) -> Callable[[Any, ShapeOf], Count]:
    def count(node: Any, shape_of: ShapeOf) -> Count:
        x = _in(node, shape_of, 0)
        _need(x)
        return int(factor * numel(x)), 0

    return count


def _pool(node: Any, shape_of: ShapeOf) -> Count:
    y = _out(node, shape_of)
    _need(y)
    kernel = attr(node, "kernel_shape", [1])
    return numel(y) * math.prod(kernel), 0


def _lrn(node: Any, shape_of: ShapeOf) -> Count:
    y = _out(node, shape_of)
    _need(y)
    # a sum of squares over `size` neighbours, then a power and a divide per element
    return numel(y) * (int(attr(node, "size", 1)) + 3), 0


def _dft(node: Any, shape_of: ShapeOf) -> Count:
    x = _in(node, shape_of, 0)
    _need(x)
    assert x is not None
    axis = attr(node, "axis", 1)
    if len(node.input) > 2 and node.input[2]:
        axis = None  # opset 20 takes the axis as an input: assume the second-to-last dim
    signal = x[:-1]  # the last dim holds 1 (real) or 2 (real, imaginary)
    ax = (axis if axis is not None else -1) % len(signal)
    n = signal[ax]
    transforms = numel(signal) // max(n, 1)
    # Radix-2 Cooley-Tukey: 5 N log2 N real FLOPs per complex transform; half that for real input.
    per = 5 * n * math.log2(n) if n > 1 else 0
    if x[-1] == 1:
        per /= 2
    return int(transforms * per), 0


def _stft(node: Any, shape_of: ShapeOf) -> Count:
    y = _out(node, shape_of)
    _need(y)
    assert y is not None
    # y: [batch, frames, bins, 2]; each frame is one transform of length ~ 2 * (bins - 1).
    n = max(2 * (y[2] - 1), 2)
    return int(y[0] * y[1] * 5 * n * math.log2(n) / 2), 0


# fmt: off
ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs", "Relu",
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Max",
    "Min", "Mean", "Sum", "Clip", "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Not", "Floor", "Ceil", "Round", "Sign", "Mod", "ThresholdedRelu", "Mish",
    "BitShift", "IsNaN", "IsInf", "QuickGelu", "BiasAdd",
)
REDUCTIONS = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum", "TopK",
)
ZERO = (
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Scatter", "ScatterND", "ScatterElements", "Expand",
    "Tile", "Pad", "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "CastLike", "Range", "NonZero",
    "Trilu", "DepthToSpace", "SpaceToDepth", "OneHot", "EyeLike", "If", "Loop", "Scan", "SequenceAt",
    "SequenceConstruct", "SequenceInsert", "SplitToSequence", "ConcatFromSequence", "Compress",
    "ReverseSequence", "Unique", "Optional", "OptionalGetElement", "OptionalHasElement",
    "Resize", "Upsample",
)
# fmt: on

COUNTERS: dict[str, Callable[[Any, ShapeOf], Count]] = {
    "Conv": _conv,
    "ConvInteger": lambda n, s: _conv(n, s, bias_index=None),
    "QLinearConv": lambda n, s: _conv(n, s, w_index=3, bias_index=8),
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": lambda n, s: _matmul(n, s, 0, 3),
    "FusedMatMul": _matmul,
    "Einsum": _einsum,
    "LSTM": _recurrent(4),
    "GRU": _recurrent(3),
    "RNN": _recurrent(1),
    "Attention": _attention_fused,
    "MultiHeadAttention": _attention_fused,
    "GroupQueryAttention": _gqa,
    "QAttention": _attention_fused,
    "DynamicQuantizeLSTM": _recurrent(4, transposed=True),
    "QGemm": lambda n, s: _gemm(n, s, bias_index=6),
    "DynamicQuantizeMatMul": _matmul,
    "MatMulIntegerToFloat": _matmul,
    "MatMulNBits": _matmul_nbits,
    # quantised elementwise and pooling ops: dequantise, operate, requantise count as the op
    "QLinearAdd": _per_output(1),
    "QLinearMul": _per_output(1),
    "QLinearSigmoid": _per_output(1),
    "QLinearLeakyRelu": _per_output(1),
    "QLinearSoftmax": _per_output(5),
    "QLinearGlobalAveragePool": _per_input(1),
    "QLinearAveragePool": _pool,
    "QLinearConcat": lambda n, s: (0, 0),
    # Normalisations: BatchNormalization at inference is a scale and a shift per element; the
    # statistics-computing ones add a mean, a variance and the normalisation (about 5 per element).
    "BatchNormalization": _per_output(2),
    "LayerNormalization": _per_output(5),
    "SimplifiedLayerNormalization": _per_output(4),
    "SkipLayerNormalization": _per_output(6),
    # two or three embedding gathers summed, then a layer norm
    "EmbedLayerNormalization": _per_output(7),
    "InstanceNormalization": _per_output(5),
    "GroupNormalization": _per_output(5),
    "MeanVarianceNormalization": _per_output(5),
    "LpNormalization": _per_output(3),
    "LRN": _lrn,
    # max, subtract, exp, sum, divide
    "Softmax": _per_output(5),
    "LogSoftmax": _per_output(5),
    "Hardmax": _per_output(1),
    "Gelu": _per_output(8),
    "FastGelu": _per_output(8),
    "BiasGelu": _per_output(9),
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _per_input(1),
    "GlobalMaxPool": _per_input(1),
    "GlobalLpPool": _per_input(2),
    # scale and zero point per element
    "QuantizeLinear": _per_output(2),
    "DequantizeLinear": _per_output(2),
    "DynamicQuantizeLinear": _per_output(4),
    "DFT": _dft,
    "STFT": _stft,
    **{op: _per_output(1) for op in ELEMENTWISE},
    **{op: _per_input(1) for op in REDUCTIONS},
    **{op: (lambda n, s: (0, 0)) for op in ZERO},
}


def count(node: Any, shape_of: ShapeOf) -> Count | None:
    """(flops, macs) of one node, or None when the op is unknown or its shapes were not inferred."""
    counter = COUNTERS.get(node.op_type)
    if counter is None:
        return None
    try:
        return counter(node, shape_of)
    except (Unknown, IndexError, ValueError, ZeroDivisionError, TypeError, AttributeError):
        return None


# --- whole graphs, control flow included -------------------------------------------------------

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


class GraphFlops:
    """FLOPs and MACs of a graph, walking into control flow.

    ``If``: when the condition is computable from constants and the bound shapes, the taken
    branch is counted; otherwise the costlier branch (an upper bound). ``Loop``: the body times
    the trip count, computed the same way; a loop whose trip count depends on input values (or a
    while-loop) has its body counted once, a lower bound. ``Scan``: the body times the scanned
    axis' length. Every such choice is listed in ``notes``.
    """

    def __init__(self) -> None:
        self.flops = 0
        self.macs = 0
        self.per_op: dict[str, int] = {}
        self.uncounted: dict[str, int] = {}
        self.taken = 0
        self.upper_bound: list[str] = []
        self.lower_bound: list[str] = []

    @property
    def notes(self) -> list[str]:
        out = []
        if self.taken:
            out.append(f"If: {self.taken} branch(es) decided by constants and input shapes: the taken one counted")
        if self.upper_bound:
            out.append(
                f"If: {len(self.upper_bound)} condition(s) depend on input values ({_names(self.upper_bound)}): "
                f"the costlier branch counted, FLOPs are an upper bound there"
            )
        if self.lower_bound:
            out.append(
                f"Loop: {len(self.lower_bound)} trip count(s) depend on input values ({_names(self.lower_bound)}): "
                f"the body counted once, FLOPs are a lower bound there"
            )
        return out

    def graph(self, graph: Any, shape_of: ShapeOf, repeat: int = 1, outer: list[Any] | None = None) -> None:
        from aivmm.models._graph import GraphIndex

        scopes = [GraphIndex.of(graph), *(outer or [])]
        values = ConstantValues(scopes, shape_of)
        for node in graph.node:
            if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
                self._control_flow(node, values, shape_of, repeat, scopes)
                continue
            counted = count(node, shape_of)
            if counted is None:
                self.uncounted[node.op_type] = self.uncounted.get(node.op_type, 0) + 1
                continue
            flops, macs = counted
            self.flops += flops * repeat
            self.macs += macs * repeat
            if flops:
                self.per_op[node.op_type] = self.per_op.get(node.op_type, 0) + flops * repeat

    def _control_flow(
        self, node: Any, values: ConstantValues, shape_of: ShapeOf, repeat: int, scopes: list[Any]
    ) -> None:
        label = node.name or node.output[0]
        if node.op_type == "If":
            branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
            cond = values.value(node.input[0])
            if cond is not None and cond.size == 1:
                self.taken += 1
                chosen = branches.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
                if chosen is not None:
                    self.graph(chosen, shape_of, repeat, scopes)
                return
            best: GraphFlops | None = None
            for body in branches.values():
                branch = GraphFlops()
                branch.graph(body, shape_of, repeat, scopes)
                if best is None or branch.flops > best.flops:
                    best = branch
            self.upper_bound.append(label)
            if best is not None:
                self._merge(best)
            return
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        if body is None:
            return
        trips: int | None = None
        if node.op_type == "Loop":
            trip = values.value(node.input[0]) if node.input and node.input[0] else None
            if trip is not None and trip.size == 1:
                trips = int(trip.reshape(-1)[0])
        else:
            scans = int(attr(node, "num_scan_inputs", 0))
            first = node.input[len(node.input) - scans] if scans else None
            shape = shape_of(first) if first else None
            if shape:
                axes = attr(node, "scan_input_axes", None)
                trips = shape[int(axes[0]) % len(shape) if axes else 0]
        if trips is None:
            self.lower_bound.append(label)
            trips = 1
        self.graph(body, shape_of, repeat * max(trips, 0), scopes)

    def _merge(self, other: GraphFlops) -> None:
        self.flops += other.flops
        self.macs += other.macs
        for op, v in other.per_op.items():
            self.per_op[op] = self.per_op.get(op, 0) + v
        for op, n in other.uncounted.items():
            self.uncounted[op] = self.uncounted.get(op, 0) + n
        self.taken += other.taken
        self.upper_bound.extend(other.upper_bound)
        self.lower_bound.extend(other.lower_bound)


def _names(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")
