"""Exact parameter counts and bytes, read from tensor headers (dims, types, external-data entries).

No weight data is read: a model over 2 GB analysed with its external data unloaded gives the
same figures as one loaded whole.

What counts as a parameter: every initializer, Constant value and constant-shaped
ConstantOfShape output, except bookkeeping tensors — rank-0 scalars (hyper-parameters such as a
scale or an epsilon) and int64 tensors of any rank (ONNX's index type: shapes, axes, pads, position
ids such as BERT's [1, 512] buffer, gather indices; no runtime quantises a weight to int64).
A one-element bias of shape [1] is a weight and counts.

Each weight counts once, however often the file stores it. Exporters write a tied weight twice:
GPT-2's LM head is ``wte`` transposed, saved as a second initializer (the 124M model would read
as 163M). Tensors of one type and size are compared by content (and 2-D ones also transposed);
a copy is not counted again. A tensor whose elements are all equal (zero biases, unit
LayerNorm scales of a freshly initialised model) is never taken for a copy of another: equal
constants are not a tie. Only tensors of equal type and size are compared, and only where at most
four share that size (more are a stack of layers), by a row-and-column signature first; external
data is never read (a tie across external files counts twice).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from typing import Any

from aivmm.models._graph import GraphIndex, subgraphs, tensor_array
from aivmm.models._onnx_types import itemsize

_INT64 = 7
_STRING = 8


@dataclasses.dataclass
class ParameterCount:
    parameters: int = 0
    parameter_bytes: int = 0
    external_bytes: int = 0  # bytes stored in external-data files
    tensors: int = 0
    shared_tensors: int = 0  # stored copies of a weight already counted (tied weights), not counted
    shared_parameters: int = 0
    # candidates for the tie check, by (type, elements)
    _seen: dict[tuple[int, int], list[Any]] = dataclasses.field(default_factory=lambda: defaultdict(list), repr=False)


def is_bookkeeping(dims: tuple[int, ...] | list[int], elem_type: int) -> bool:
    return len(dims) == 0 or elem_type == _INT64


def _tensor_bytes(t: Any) -> tuple[int, bool]:
    """(bytes, external) of a TensorProto, without reading external data."""
    n = math.prod(t.dims)
    if t.data_location == 1:  # EXTERNAL
        entries = {e.key: e.value for e in t.external_data}
        if "length" in entries and entries["length"].isdigit():
            return int(entries["length"]), True
        return math.ceil(n * itemsize(t.data_type)), True
    if t.data_type == _STRING:
        return sum(len(s) for s in t.string_data), False
    return math.ceil(n * itemsize(t.data_type)), False


def count(graph: Any, out: ParameterCount | None = None) -> ParameterCount:
    top = out is None
    out = out or ParameterCount()
    _walk(graph, out)
    if top:
        _drop_copies(out)
    return out


def _walk(graph: Any, out: ParameterCount) -> None:
    index = GraphIndex.of(graph)
    for t in graph.initializer:
        _add(out, t)
    for sparse in graph.sparse_initializer:
        if not is_bookkeeping(list(sparse.dims), sparse.values.data_type):
            out.parameters += math.prod(sparse.values.dims)
            out.parameter_bytes += _tensor_bytes(sparse.values)[0] + _tensor_bytes(sparse.indices)[0]
            out.tensors += 1
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            _add_constant_node(out, node)
        elif node.op_type == "ConstantOfShape" and node.input and index.is_constant(node.input[0]):
            _add_generated(out, node, index)
        for sub in subgraphs(node):
            _walk(sub, out)


def _add(out: ParameterCount, t: Any) -> None:
    if is_bookkeeping(list(t.dims), t.data_type):
        return
    size, external = _tensor_bytes(t)
    out.parameters += math.prod(t.dims)
    out.parameter_bytes += size
    out.tensors += 1
    if external:
        out.external_bytes += size
    elif math.prod(t.dims) >= _TIE_MIN:
        out._seen[(t.data_type, math.prod(t.dims))].append(t)


_TIE_MIN = 64  # elements: smaller tensors are not worth reading to find ties
# Ties join a few tensors (an embedding and its LM head; T5's shared, encoder and decoder
# embeddings); a dozen same-sized tensors are a stack of layers, not copies, and reading them all
# would cost a pass over most of the weights.
_TIE_GROUP_MAX = 4


def _drop_copies(out: ParameterCount) -> None:
    """Remove copies: tensors whose content equals (or, 2-D, is the transpose of) an earlier one.

    A cheap signature first (the digests of the first row and the first column, an unordered pair,
    so a matrix and its transpose share it; the first 4096 elements otherwise), then an exact
    comparison only where signatures meet: a model of distinct weights costs a row and a column
    read per tensor, not a pass over every byte.
    """
    for group in out._seen.values():
        if not 2 <= len(group) <= _TIE_GROUP_MAX:
            continue
        kept: dict[Any, list[Any]] = defaultdict(list)
        for t in group:
            a = tensor_array(t)
            if a is None:
                continue
            flat = a.reshape(-1)
            if flat.size == 0 or ((flat[: min(flat.size, 64)] == flat[0]).all() and (flat == flat[0]).all()):
                continue  # equal constants are not a tie
            sig = _signature(a)
            if any(_same(a, b) for b in kept[sig]):
                size, _ = _tensor_bytes(t)
                out.parameters -= a.size
                out.parameter_bytes -= size
                out.tensors -= 1
                out.shared_tensors += 1
                out.shared_parameters += a.size
                continue
            kept[sig].append(a)
    out._seen.clear()


def _signature(a: Any) -> Any:
    def digest(x: Any) -> bytes:
        return hashlib.blake2b(x.tobytes(), digest_size=16).digest()

    if a.ndim == 2:
        return frozenset((digest(a[0]), digest(a[:, 0].copy())))
    return digest(a.reshape(-1)[:4096])


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    if a.shape == b.shape and np.array_equal(a, b):
        return True
    return a.ndim == 2 and a.shape == b.shape[::-1] and np.array_equal(a, b.T)


def _add_constant_node(out: ParameterCount, node: Any) -> None:
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            _add(out, a.t)
        elif a.name == "sparse_value" and a.HasField("sparse_tensor"):
            values = a.sparse_tensor.values
            if not is_bookkeeping(list(a.sparse_tensor.dims), values.data_type):
                out.parameters += math.prod(values.dims)
                out.parameter_bytes += _tensor_bytes(values)[0] + _tensor_bytes(a.sparse_tensor.indices)[0]
                out.tensors += 1
        elif a.name in ("value_floats", "value_ints") and len(a.floats or a.ints) > 1:
            n = len(a.floats) or len(a.ints)
            if a.name == "value_floats":
                out.parameters += n
                out.parameter_bytes += n * (4 if a.name == "value_floats" else 8)
                out.tensors += 1


def _add_generated(out: ParameterCount, node: Any, index: GraphIndex) -> None:
    """ConstantOfShape fed by a constant shape: a weight materialised at load (ONNX's light models)."""
    from onnx import numpy_helper

    shape_tensor = index.constant_tensor(node.input[0])
    if shape_tensor is None or shape_tensor.data_location == 1:
        return
    try:
        dims = [int(d) for d in numpy_helper.to_array(shape_tensor).reshape(-1)]
    except (ValueError, TypeError):
        return
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    elem = value.data_type if value is not None else 1
    if any(d < 0 for d in dims) or is_bookkeeping(dims, elem):
        return
    n = math.prod(dims)
    out.parameters += n
    out.parameter_bytes += math.ceil(n * itemsize(elem))
    out.tensors += 1
