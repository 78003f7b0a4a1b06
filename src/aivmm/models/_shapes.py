"""Binding symbolic input dimensions to sizes, and ONNX shape inference over the bound graph.

FLOPs and activation memory need concrete shapes. The user may give some (``shapes=``); every
symbolic dimension left is assumed (1 for batch-like dims, 128 for sequence-like dims, 1 otherwise)
and each assumption is reported, so a figure never hides where its numbers came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from aivmm.errors import InputError
from aivmm.models._spec import Dim, TensorSpec

_BATCH_NAMES = frozenset({"batch", "batch_size", "batchsize", "bs", "n", "b", "num_batches", "unk__batch"})
_SEQUENCE_HINTS = ("seq", "sequence", "len", "length", "time", "token", "step", "frames", "positions")
DEFAULT_BATCH = 1
DEFAULT_SEQUENCE = 128


def is_batch_like(name: str | None, index: int) -> bool:
    if name is None:
        return index == 0
    low = name.lower()
    return low in _BATCH_NAMES or "batch" in low or (index == 0 and not any(h in low for h in _SEQUENCE_HINTS))


@dataclasses.dataclass(frozen=True)
class Binding:
    shapes: dict[str, tuple[int, ...]]
    assumptions: tuple[str, ...]


def bind(inputs: Sequence[TensorSpec], given: Mapping[str, Sequence[int]] | None, signature: str) -> Binding:
    """Concrete shapes for every input; raises InputError where ``given`` contradicts the model."""
    given = dict(given or {})
    by_name = {t.name: t for t in inputs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InputError(f"shape given for unknown input(s) {unknown}; the model has {signature}")
    symbols: dict[str, int] = {}
    for name, raw in given.items():
        spec = by_name[name]
        shape = _as_shape(name, raw)
        if len(shape) != spec.rank:
            raise InputError(
                f"input {name!r}: shape {list(shape)} has rank {len(shape)} but the model expects rank "
                f"{spec.rank} ({spec.describe()})"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                raise InputError(
                    f"input {name!r}: dimension {axis} is fixed to {want} in the model but {got} was given "
                    f"({spec.describe()})"
                )
            if isinstance(want, str) and symbols.setdefault(want, got) != got:
                raise InputError(
                    f"input {name!r}: symbolic dimension {want!r} is {got} here but {symbols[want]} "
                    f"in another input"
                )
    shapes: dict[str, tuple[int, ...]] = {}
    assumptions: list[str] = []
    for spec in inputs:
        if spec.name in given:
            shapes[spec.name] = _as_shape(spec.name, given[spec.name])
            continue
        dims: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim >= 0:
                dims.append(dim)
                continue
            key = dim if isinstance(dim, str) else f"{spec.name}[{axis}]"
            if key not in symbols:
                label = dim if isinstance(dim, str) else None
                if is_batch_like(label, axis):
                    symbols[key] = DEFAULT_BATCH
                elif label is not None and any(h in label.lower() for h in _SEQUENCE_HINTS):
                    symbols[key] = DEFAULT_SEQUENCE
                else:
                    symbols[key] = 1
                what = f"symbolic dimension {dim!r}" if label else "unknown dimension"
                assumptions.append(f"assumed {what} of {spec.name}[{axis}] = {symbols[key]}")
            dims.append(symbols[key])
        shapes[spec.name] = tuple(dims)
    return Binding(shapes, tuple(assumptions))


def _as_shape(name: str, raw: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in raw)
        if any(not isinstance(d, int | float) or int(d) != d for d in raw):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"input {name!r}: shape {raw!r} is not a sequence of integers") from None
    if any(d < 1 for d in shape):
        raise InputError(f"input {name!r}: shape {list(shape)} has a dimension below 1")
    return shape


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` (``,`` also separates dims) -> (name, shape)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise InputError(f"bad shape {text!r}: expected NAME=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"bad shape {text!r}: dimensions must be integers, as in NAME=1x3x224x224") from None
    return name, _as_shape(name, shape)


# A weight above this many elements is given to shape inference as a typed input rather than as
# data: inference only needs its shape, and copying hundreds of MB of weights would dominate.
INLINE_LIMIT = 4096


def skeleton(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """A copy of ``model`` without large weight data, with the inputs fixed to ``shapes``."""
    import onnx
    from onnx import helper

    sk = onnx.ModelProto()
    sk.ir_version = max(model.ir_version, 4)
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.output.extend(model.graph.output)
    init_names = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in init_names:
            continue
        copy = g.input.add()
        copy.CopyFrom(value)
        if value.name in shapes and copy.type.HasField("tensor_type"):
            shape = copy.type.tensor_type.shape
            del shape.dim[:]
            for d in shapes[value.name]:
                shape.dim.add().dim_value = d
    for t in model.graph.initializer:
        size = 1
        for d in t.dims:
            size *= d
        external = t.data_location == onnx.TensorProto.EXTERNAL
        if size <= INLINE_LIMIT and not external:
            g.initializer.append(t)
        else:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    return sk


def infer(sk: Any, strict: bool) -> dict[str, tuple[int, tuple[Dim, ...]]]:
    """Run ONNX shape inference; map every tensor name (subgraphs included) to (elem type, dims)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(sk, check_type=False, strict_mode=strict, data_prop=True)
    table: dict[str, tuple[int, tuple[Dim, ...]]] = {}
    _collect(inferred.graph, table)
    return table


def _collect(graph: Any, table: dict[str, tuple[int, tuple[Dim, ...]]]) -> None:
    from aivmm.models._graph import subgraphs

    for value in (*graph.input, *graph.value_info, *graph.output):
        # A tensor of unknown rank is left out: its size is unknown, and () would mean a scalar.
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            table[value.name] = (value.type.tensor_type.elem_type, dims_of(value))
    for t in graph.initializer:
        table[t.name] = (t.data_type, tuple(t.dims))
    for node in graph.node:
        for sub in subgraphs(node):
            _collect(sub, table)


def dims_of(value: Any) -> tuple[Dim, ...]:
    """Dims of a ValueInfoProto: int, symbolic name, or None."""
    tt = value.type.tensor_type
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
