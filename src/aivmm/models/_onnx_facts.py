"""Structural facts of an ONNX graph for the categoriser: attention chains, masks, embeddings, ..."""

from __future__ import annotations

import collections
from typing import Any

from aivmm.models._categorize import Facts
from aivmm.models._graph import GraphIndex, subgraphs, walk_nodes

CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "NhwcConv", "FusedConv"})
MATMUL_OPS = frozenset({"MatMul", "Einsum", "FusedMatMul", "QLinearMatMul", "MatMulInteger", "Gemm"})
DENSE_OPS = frozenset({"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"})
FUSED_ATTENTION = frozenset({
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "DecoderAttention",
    "LongformerAttention", "QAttention", "QOrderedAttention", "PagedAttention",
})
RECURRENT = frozenset({"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"})
SPECTRAL = frozenset({"DFT", "STFT", "Rfft", "Irfft", "Fft", "Ifft", "MelWeightMatrix"})
LAYER_NORMS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                         "SkipSimplifiedLayerNormalization", "RMSNormalization"})
GATES = frozenset({"Sigmoid", "Tanh", "HardSigmoid"})
POOLING = frozenset({"ReduceSum", "ReduceMean", "ReduceMax"})
_INTEGER = frozenset({2, 3, 4, 5, 6, 7, 12, 13})
_FLOAT = frozenset({1, 10, 11, 16})
_WEIGHT_USERS = MATMUL_OPS | CONV_OPS | LAYER_NORMS | {"Gather", "BatchNormalization", "LSTM", "GRU", "RNN"}
_MAX_MASK_ELEMENTS = 1 << 22  # read at most a 2048 x 2048 mask


def collect(model: Any, histogram: dict[str, int]) -> Facts:
    graph = model.graph
    index = GraphIndex.of(graph)
    f = Facts()
    f.top_ops = [op for op, _ in collections.Counter(histogram).most_common()]
    for node in walk_nodes(graph):
        op = node.op_type
        if op in CONV_OPS:
            f.convolutions += 1
        elif op in FUSED_ATTENTION:
            f.fused_attention += 1
        elif op in RECURRENT:
            key = "LSTM" if "LSTM" in op else op
            f.recurrent_ops[key] = f.recurrent_ops.get(key, 0) + 1
        elif op in SPECTRAL:
            f.spectral_ops[op] = f.spectral_ops.get(op, 0) + 1
        elif op in LAYER_NORMS:
            f.layer_norms += 1
        elif op in ("Sin", "Cos"):
            f.periodic_activations += 1
        elif op == "Tanh":
            f.tanh_activations += 1
        elif op == "Trilu" and "Trilu op builds a triangular (causal) mask" not in f.causal_evidence:
            f.causal_evidence.append("Trilu op builds a triangular (causal) mask")
        elif op in ("Loop", "Scan") and _recurrent_body(node):
            f.loop_recurrences += 1
    _attention(index, f)
    _triangular_constants(index, f)
    _inputs(graph, index, f)
    _embeddings_and_dense(index, f)
    _unrolled(index, f)
    return f


def _recurrent_body(node: Any) -> bool:
    for body in subgraphs(node):
        ops = {n.op_type for n in walk_nodes(body)}
        if ops & MATMUL_OPS and ops & GATES:
            return True
    return False


def _attention(index: GraphIndex, f: Facts) -> None:
    for node in index.nodes:
        if node.op_type != "Softmax" or not node.input:
            continue
        before = list(index.upstream(node.input[0], max_depth=6))
        if not any(n.op_type in MATMUL_OPS - {"Gemm"} for n in before):
            continue
        if not any(n.op_type in MATMUL_OPS - {"Gemm"} for n in index.downstream(node.output[0], max_depth=4)):
            continue
        f.attention_blocks += 1
        for where in (n for n in before if n.op_type == "Where" and n.input):
            _, constant = index.roots(where.input[0])
            if constant:
                sentence = "Where applies a constant mask to the attention scores (causal)"
                if sentence not in f.causal_evidence:
                    f.causal_evidence.append(sentence)


def _triangular_constants(index: GraphIndex, f: Facts) -> None:
    import numpy as np
    from onnx import numpy_helper

    for name in (*index.initializers, *index.constants):
        # A mask is combined with scores elementwise; weights feed matmuls, convs and gathers.
        if any(n.op_type in _WEIGHT_USERS for n in index.consumers.get(name, ())):
            continue
        t = index.constant_tensor(name)
        if t is None or len(t.dims) < 2 or t.dims[-1] != t.dims[-2] or t.dims[-1] < 2:
            continue
        n = 1
        for d in t.dims:
            n *= d
        if n > _MAX_MASK_ELEMENTS or t.data_location == 1:
            continue
        try:
            a = numpy_helper.to_array(t).reshape(-1, t.dims[-2], t.dims[-1])[0]
        except (ValueError, TypeError):
            continue
        upper = a[np.triu_indices(a.shape[0], 1)]
        lower = a[np.tril_indices(a.shape[0])]
        if upper.size and (upper == upper[0]).all() and (lower == lower[0]).all() and upper[0] != lower[0]:
            f.causal_evidence.append(f"triangular constant {name!r} {list(t.dims)}: a causal mask")
            return


def _inputs(graph: Any, index: GraphIndex, f: Facts) -> None:
    for value in graph.input:
        if value.name in index.initializers or not value.type.HasField("tensor_type"):
            continue
        tt = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.elem_type in _INTEGER and len(dims) == 2 and dims[1] != 1:
            f.token_inputs.append(value.name)
        if tt.elem_type in _FLOAT:
            f.float_inputs += 1
            if len(dims) in (2, 3) and dims[-1] is not None and dims[-1] <= 4:
                f.coordinate_inputs.append(value.name)


def _weight_like(index: GraphIndex, name: str) -> bool:
    if index.is_constant(name):
        return True
    producer = index.producer.get(name)
    return producer is not None and producer.op_type in ("DequantizeLinear", "Transpose", "Cast") and any(
        index.is_constant(i) for i in producer.input if i
    )


def _embeddings_and_dense(index: GraphIndex, f: Facts) -> None:
    for node in index.nodes:
        if node.op_type == "Gather" and len(node.input) == 2 and index.is_constant(node.input[0]):
            table = index.constant_tensor(node.input[0])
            if table is None or len(table.dims) != 2 or table.dims[0] < 16:
                continue
            roots, _ = index.roots(node.input[1])
            if not roots:
                continue
            f.embedding_tables[node.input[0]] = int(table.dims[0])
            f.index_inputs.update(roots)
            if any(n.op_type in POOLING for n in index.downstream(node.output[0], max_depth=2)):
                f.embedding_bags += 1
        elif node.op_type in DENSE_OPS:
            operands = [i for i in node.input[:2] if i]
            if any(_weight_like(index, i) for i in operands):
                f.dense_layers += 1
            elif node.op_type in ("MatMul", "Einsum") and len(operands) == 2:
                near = [*index.upstream(node.input[0], 3), *index.downstream(node.output[0], 3)]
                if not any(n.op_type == "Softmax" for n in near):
                    f.interactions += 1


def _unrolled(index: GraphIndex, f: Facts) -> None:
    gates = sum(1 for n in index.nodes if n.op_type in GATES)
    if gates < 3:
        return
    for name in index.initializers:
        users = [n for n in index.consumers.get(name, ()) if n.op_type in DENSE_OPS]
        if len(users) >= 3:
            f.unrolled_recurrences += 1
