"""Structural facts of an ONNX graph for the categoriser: attention chains, masks, embeddings, ..."""

from __future__ import annotations

import collections
from typing import Any

from aivmm.models._categorize import Facts
from aivmm.models._graph import GraphIndex, subgraphs, tensor_array, walk_nodes

CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "NhwcConv", "FusedConv"})
MATMUL_OPS = frozenset({"MatMul", "Einsum", "FusedMatMul", "QLinearMatMul", "MatMulInteger", "Gemm"})
DENSE_OPS = frozenset({"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"})
FUSED_ATTENTION = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
        "DecoderMaskedMultiHeadAttention",
        "DecoderMaskedSelfAttention",
        "SparseAttention",
        "DecoderAttention",
        "LongformerAttention",
        "QAttention",
        "QOrderedAttention",
        "PagedAttention",
    }
)
RECURRENT = frozenset({"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"})
SPECTRAL = frozenset({"DFT", "STFT", "Rfft", "Irfft", "Fft", "Ifft", "MelWeightMatrix"})
LAYER_NORMS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "RMSNormalization",
    }
)
GATES = frozenset({"Sigmoid", "Tanh", "HardSigmoid"})
POOLING = frozenset({"ReduceSum", "ReduceMean", "ReduceMax"})
_INTEGER = frozenset({2, 3, 4, 5, 6, 7, 12, 13})
_FLOAT = frozenset({1, 10, 11, 16})
_WEIGHT_USERS = MATMUL_OPS | CONV_OPS | LAYER_NORMS | {"Gather", "BatchNormalization", "LSTM", "GRU", "RNN"}
_ANY = frozenset({"Unsqueeze", "Reshape", "Cast", "Expand", "Add", "Sub", "Slice", "Squeeze", "Identity"})
_MAX_MASK_ELEMENTS = 1 << 22
_MAX_BASIS_ELEMENTS = 1 << 20  # read at most a 2048 x 2048 mask


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
    _embedding_bag_loops(index, f)
    _dft_bases(index, f)
    _unrolled(index, f)
    _workload(model, index, f)
    return f


def _recurrent_body(node: Any) -> bool:
    for body in subgraphs(node):
        ops = {n.op_type for n in walk_nodes(body)}
        if ops & MATMUL_OPS and ops & GATES:
            return True
    return False


def _attention(index: GraphIndex, f: Facts) -> None:
    for node in index.nodes:
        if node.op_type not in ("Softmax", "QLinearSoftmax") or not node.input:
            continue
        before = list(index.upstream(node.input[0], max_depth=6))
        if not any(n.op_type in MATMUL_OPS - {"Gemm"} for n in before):
            continue
        if not any(n.op_type in MATMUL_OPS - {"Gemm"} for n in index.downstream(node.output[0], max_depth=4)):
            continue
        f.attention_blocks += 1
        for where in (n for n in before if n.op_type == "Where" and len(n.input) == 3):
            # A mask selects between scores and a fill value; a Where among shape arithmetic
            # (Expand's "-1 means keep" idiom in BERT's mask broadcast) is no mask.
            if not any(_score_or_fill(index, i) for i in where.input[1:]):
                continue
            _, constant = index.roots(where.input[0])
            if constant:
                sentence = "Where applies a constant mask to the attention scores (causal)"
                if sentence not in f.causal_evidence:
                    f.causal_evidence.append(sentence)
            elif _position_comparison(index, where.input[0]):
                sentence = "the attention mask compares query and key positions (kv <= q: causal)"
                if sentence not in f.causal_evidence:
                    f.causal_evidence.append(sentence)


_ORDER = frozenset({"LessOrEqual", "GreaterOrEqual", "Less", "Greater"})


def _position_comparison(index: GraphIndex, mask: str) -> bool:
    """A mask built from ``kv_idx <= q_idx`` over two position ranges (transformers' sdpa_mask)."""
    seen: set[str] = set()
    frontier = [(mask, 0)]
    while frontier:
        name, depth = frontier.pop()
        node = index.producer.get(name)
        if node is None or name in seen or depth > 12:
            continue
        seen.add(name)
        ranged = [any(n.op_type == "Range" for n in index.upstream(i, 5, _ANY)) for i in node.input]
        if node.op_type in _ORDER and len(ranged) == 2 and all(ranged):
            return True
        frontier.extend((i, depth + 1) for i in node.input if i)
    return False


def _score_or_fill(index: GraphIndex, name: str) -> bool:
    """Attention scores (a MatMul upstream) or a floating fill value (0, -inf, the dtype's min)."""
    t = index.constant_tensor(name)
    if t is not None:
        return t.data_type in _FLOAT
    return any(n.op_type in MATMUL_OPS - {"Gemm"} for n in index.upstream(name, max_depth=3))


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
    return (
        producer is not None
        and producer.op_type in ("DequantizeLinear", "Transpose", "Cast")
        and any(index.is_constant(i) for i in producer.input if i)
    )


def _embeddings_and_dense(index: GraphIndex, f: Facts) -> None:
    for node in index.nodes:
        if node.op_type == "EmbedLayerNormalization" and len(node.input) > 2 and index.is_constant(node.input[2]):
            # ORT's fused BERT embedding: (input_ids, segment_ids, word_embedding, position_embedding, ...)
            table = index.constant_tensor(node.input[2])
            roots, _ = index.roots(node.input[0])
            if table is not None and len(table.dims) == 2 and roots:
                f.embedding_tables[node.input[2]] = int(table.dims[0])
                f.index_inputs.update(roots)
        elif node.op_type == "Gather" and len(node.input) == 2 and _table(index, node.input[0]) is not None:
            table = _table(index, node.input[0])
            if table is None or len(table.dims) != 2 or table.dims[0] < 16:
                continue
            roots, _ = index.roots(node.input[1])
            if not roots:
                continue
            f.embedding_tables[table.name or node.input[0]] = int(table.dims[0])
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


def _table(index: GraphIndex, name: str) -> Any:
    """A constant embedding table, or the constant an int8 table is dequantised from."""
    if index.is_constant(name):
        return index.constant_tensor(name)
    producer = index.producer.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear" and index.is_constant(producer.input[0]):
        return index.constant_tensor(producer.input[0])
    return None


def _embedding_bag_loops(index: GraphIndex, f: Facts) -> None:
    """torch.onnx exports ``nn.EmbeddingBag`` as a Loop over bags: Gather rows, ReduceSum/Mean them."""
    for node in index.nodes:
        if node.op_type not in ("Loop", "Scan"):
            continue
        for body in subgraphs(node):
            inner = GraphIndex.of(body)
            for gather in inner.nodes:
                if gather.op_type != "Gather" or not index.is_constant(gather.input[0]):
                    continue
                table = index.constant_tensor(gather.input[0])
                if table is None or len(table.dims) != 2 or table.dims[0] < 16:
                    continue
                pooled = any(n.op_type in POOLING for n in inner.downstream(gather.output[0], max_depth=3))
                outer = {i for n in walk_nodes(body) for i in n.input if i and i not in inner.producer}
                roots: set[str] = set()
                for name in outer & set(index.producer) | outer & set(index.graph_inputs):
                    found, _ = index.roots(name)
                    roots |= found & index.integer_inputs
                if not roots or not pooled:
                    continue
                f.embedding_tables[gather.input[0]] = int(table.dims[0])
                f.index_inputs.update(roots)
                f.embedding_bags += 1


def _dft_bases(index: GraphIndex, f: Facts) -> None:
    """A MatMul with a constant cos/sin matrix: a (truncated) Fourier transform written as a product."""
    import numpy as np

    for node in index.nodes:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        t = index.constant_tensor(node.input[1])
        # samples x kept modes (at most N/2 + 1 of a real transform), a few MB at most: square
        # and large matrices are layers, and reading each would cost a pass over the weights
        if t is None or len(t.dims) != 2 or min(t.dims) < 2 or max(t.dims) < 8:
            continue
        if min(t.dims) > max(t.dims) // 2 + 1 or t.dims[0] * t.dims[1] > _MAX_BASIS_ELEMENTS:
            continue
        a = tensor_array(t)
        # A basis has a constant first row (cos 0 = 1 for every mode) or first column (its
        # inverse): one look rules out ordinary weights before any arithmetic.
        if a is None or a.dtype.kind != "f" or not (_constant(a[0]) or _constant(a[:, 0])):
            continue
        a = a.astype(np.float64)
        if _is_dft_basis(a) or _is_dft_basis(a.T):
            f.spectral_ops["DFT-basis MatMul"] = f.spectral_ops.get("DFT-basis MatMul", 0) + 1


def _constant(v: Any) -> bool:
    return bool(abs(v - v[0]).max() <= 1e-6 * max(abs(float(v[0])), 1e-12)) if v.size else False


def _is_dft_basis(a: Any) -> bool:
    import numpy as np

    n, k = a.shape  # samples x modes
    if n < 8:
        return False
    grid = 2 * np.pi * np.arange(n) / n
    for mode in range(1, min(k, 4)):
        col = a[:, mode]
        norm = np.linalg.norm(col)
        if norm == 0:
            return False
        best = max(abs(col @ np.cos(mode * grid)), abs(col @ np.sin(mode * grid))) / norm
        if best < 0.999 * np.sqrt(n / 2):
            return False
    return True


def _workload(model: Any, index: GraphIndex, f: Facts) -> None:
    """What the model serves, from its inputs, outputs, metadata and first layers: detector, OCR, audio."""
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("task") == "detect" and "stride" in meta:
        what = f"model metadata task=detect, stride={meta['stride']}, imgsz={meta.get('imgsz')}"
        f.workload.append(("detector", what))
    for value in model.graph.output:
        dims = _dims(value)
        boxes = _box_layout(dims)
        if boxes and f.convolutions and not any(w == "detector" for w, _ in f.workload):
            producer = index.producer.get(value.name)
            if producer is not None and producer.op_type == "Transpose" and producer.input:
                producer = index.producer.get(producer.input[0])  # YOLOX: [batch, anchors, 5 + classes]
            if producer is not None and producer.op_type == "Concat":
                f.workload.append(("detector", f"output {value.name} {boxes}: boxes + scores per anchor, concatenated"))
        if len(dims) == 3 and isinstance(dims[2], int) and dims[2] >= 1000 and f.convolutions:
            producer = index.producer.get(value.name)
            if producer is not None and producer.op_type == "Softmax":
                f.workload.append(
                    (
                        "ocr-recognizer",
                        f"output {value.name} [batch, time, {dims[2]}]: per-step softmax over characters (CTC)",
                    )
                )
        if len(dims) == 4 and dims[1] == 1 and f.convolutions:
            producer = index.producer.get(value.name)
            if producer is not None and producer.op_type == "Sigmoid":
                f.workload.append(
                    (
                        "segmentation",
                        f"output {value.name} [batch, 1, H, W] through Sigmoid: a per-pixel probability map",
                    )
                )
    if f.convolutions and f.recurrent_ops and not any(w == "ocr-recognizer" for w, _ in f.workload):
        classes = _character_head(index, model.graph)
        if classes:
            f.workload.append(
                (
                    "ocr-recognizer",
                    f"convolutions, then {'/'.join(sorted(f.recurrent_ops))}, then a {classes}-way per-step classifier "
                    f"(a CRNN: CTC over characters)",
                )
            )
    for graph in _graphs(model.graph):
        where = GraphIndex.of(graph)
        conv = next((n for n in where.nodes if _stft_conv(where, n)), None)
        if conv is not None:
            w = where.constant_tensor(conv.input[1])
            f.workload.append(
                ("audio", f"Conv1d {conv.input[1]} {list(w.dims)} over one channel: an STFT of raw audio")
            )
            break
    for value in model.graph.input:
        dims = _dims(value)
        frames = len(dims) == 3 and not (isinstance(dims[2], int) and dims[2] < 16)
        mel = value.type.tensor_type.elem_type in _FLOAT and frames and dims[1] in (40, 64, 80, 128)
        if mel and (f.convolutions or f.attention_blocks):
            f.workload.append(("audio", f"input {value.name} [batch, {dims[1]}, frames]: a mel spectrogram"))
            break


def _character_head(index: GraphIndex, graph: Any) -> int:
    """Classes of a Gemm/MatMul with >= 1000 outputs that feeds a graph output (through reshapes)."""
    for value in graph.output:
        for node in index.upstream(value.name, 5, _HEAD_PATH):
            if node.op_type in _HEADS and len(node.input) > 1 and index.is_constant(node.input[1]):
                w = index.constant_tensor(node.input[1])
                transposed = any(a.name == "transB" and a.i for a in node.attribute)
                classes = int(w.dims[0] if transposed else w.dims[-1]) if w is not None and len(w.dims) == 2 else 0
                if classes >= 1000:
                    return classes
    return 0


_HEADS = frozenset({"Gemm", "MatMul", "MatMulInteger"})
_HEAD_PATH = frozenset(
    {
        "Reshape",
        "Transpose",
        "Softmax",
        "LogSoftmax",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Add",
        "Mul",
        "Cast",
    }
)


def _box_layout(dims: list[Any]) -> str:
    """``[batch, 4 + classes, anchors]`` (Ultralytics) or ``[batch, anchors, 5 + classes]`` (YOLOX)."""
    if len(dims) != 3:
        return ""
    per, anchors = dims[1], dims[2]
    if isinstance(per, int) and 5 <= per <= 300 and (not isinstance(anchors, int) or anchors >= 100):
        return f"[batch, {per}, anchors]"
    if isinstance(anchors, int) and 5 <= anchors <= 300 and isinstance(per, int) and per >= 100:
        return f"[batch, {per} anchors, {anchors}]"
    return ""


def _graphs(graph: Any) -> list[Any]:
    out = [graph]
    for node in walk_nodes(graph):
        out.extend(subgraphs(node))
    return out


def _stft_conv(index: GraphIndex, node: Any) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    w = index.constant_tensor(node.input[1])
    return w is not None and len(w.dims) == 3 and w.dims[1] == 1 and w.dims[2] >= 64


def _dims(value: Any) -> list[Any]:
    if not value.type.HasField("tensor_type"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]
