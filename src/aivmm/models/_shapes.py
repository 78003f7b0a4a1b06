"""Binding symbolic input dimensions to sizes, and ONNX shape inference over the bound graph.

FLOPs and activation memory need concrete shapes. The user may give some (``shapes=``); every
symbolic dimension left is assumed (1 for batch-like dims, 128 for sequence-like dims, 1 otherwise)
and each assumption is reported, so a figure never hides where its numbers came from.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
import sys
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
                    f"input {name!r}: symbolic dimension {want!r} is {got} here but {symbols[want]} in another input"
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
    """Run ONNX shape inference; map every tensor name (subgraphs included) to (elem type, dims).

    ONNX's inference loses sizes it could know from the bound inputs wherever a shape is computed
    at run time (``Shape -> Gather -> Concat -> Reshape``, masks built from ``Range``): exported
    transformers and Paddle models end with ``unk__N`` on every activation. Where any tensor is
    left symbolic, ONNX Runtime's symbolic shape inference (when installed) is run too: it
    evaluates those shape computations on the concrete inputs, and a size either pass found wins.
    """
    import onnx

    sk = _with_standins(sk)
    inferred = onnx.shape_inference.infer_shapes(sk, check_type=False, strict_mode=strict, data_prop=True)
    table: dict[str, tuple[int, tuple[Dim, ...]]] = {}
    _collect(inferred.graph, table)
    if any(not _concrete(dims) for _, dims in table.values()):
        _refine(sk, table)
    _refine_subgraphs(sk, sk.graph, table, {})
    return table


# ONNX Runtime's quantised contrib ops have no ONNX shape inference, so every size after the
# first QLinearAdd is unknown (and ORT's symbolic pass gives up on them). For inference only, each
# is replaced by the standard op with the same shape rule: op -> (standard op, operand indices).
_STANDINS: dict[str, tuple[str, tuple[int, ...]]] = {
    "QLinearAdd": ("Add", (0, 3)),
    "QLinearMul": ("Mul", (0, 3)),
    "QLinearSigmoid": ("Identity", (0,)),
    "QLinearLeakyRelu": ("Identity", (0,)),
    "QLinearSoftmax": ("Identity", (0,)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,)),
    "QLinearAveragePool": ("AveragePool", (0,)),
    "QGemm": ("Gemm", (0, 3)),
    "DynamicQuantizeMatMul": ("MatMul", (0, 1)),
    "MatMulIntegerToFloat": ("MatMul", (0, 1)),
    "DynamicQuantizeLSTM": ("LSTM", (0, 1, 2)),  # sizes from hidden_size and direction, as LSTM's
}


_STANDIN_ATTRIBUTES = {
    "Gemm": frozenset({"transA", "transB"}),
    "AveragePool": frozenset({"kernel_shape", "strides", "pads", "ceil_mode"}),
    "LSTM": frozenset({"hidden_size", "direction", "layout"}),
}


def _with_standins(sk: Any) -> Any:
    from onnx import helper

    if not any(n.op_type in _STANDINS and n.domain == "com.microsoft" for n in sk.graph.node):
        return sk
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(sk)
    del out.graph.node[:]
    for node in sk.graph.node:
        if node.op_type in _STANDINS and node.domain == "com.microsoft":
            op, operands = _STANDINS[node.op_type]
            keep = _STANDIN_ATTRIBUTES.get(op, frozenset())
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in keep}
            inputs = [node.input[i] for i in operands if i < len(node.input)]
            outputs = list(node.output) if op == "LSTM" else list(node.output)[:1]
            out.graph.node.append(helper.make_node(op, inputs, outputs, node.name, **attrs))
        else:
            out.graph.node.append(node)
    return out


def _concrete(dims: tuple[Dim, ...]) -> bool:
    return all(isinstance(d, int) for d in dims)


@functools.cache
def _symbolic_shape_inference() -> Any:
    """ONNX Runtime's ``SymbolicShapeInference`` class, or None without onnxruntime (or a file at the
    expected place).

    Loaded from its file rather than imported: importing ``onnxruntime.tools`` runs that package's
    ``__init__``, which imports torch whenever torch is installed (about 10 s of a 15 s ``aivmm analyze``
    on BERT here) for an export helper this pass never calls. The module itself needs onnx, numpy and
    sympy only.
    """
    loaded = sys.modules.get("onnxruntime.tools.symbolic_shape_infer")
    if loaded is None:
        try:
            found = importlib.util.find_spec("onnxruntime")  # finds the package without importing it
        except (ImportError, ValueError):
            return None
        if found is None or not found.submodule_search_locations:
            return None
        path = pathlib.Path(next(iter(found.submodule_search_locations))) / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location("aivmm_ort_symbolic_shape_infer", path)
        if not path.is_file() or spec is None or spec.loader is None:
            return None
        loaded = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(loaded)
        except ImportError:  # sympy missing: the refinement is an extra, ONNX's own figures stand
            return None
    return getattr(loaded, "SymbolicShapeInference", None)


def _refine(sk: Any, table: dict[str, tuple[int, tuple[Dim, ...]]]) -> None:
    SymbolicShapeInference = _symbolic_shape_inference()
    if SymbolicShapeInference is None:
        return
    # SymbolicShapeInference.infer_shapes() is these steps, but on an incomplete pass it saves
    # "sym_shape_infer_temp.onnx" (+ a .data file) into the working directory and raises, dropping
    # the sizes it did find. Running the steps here keeps the partial result and writes nothing.
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(sk)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        inferred = inference.out_mp_
    except Exception:  # it asserts on graphs it cannot follow; ONNX's figures stand then
        return
    _collect(inferred.graph, table)


def _refine_subgraphs(
    sk: Any, graph: Any, table: dict[str, tuple[int, tuple[Dim, ...]]], constants: dict[str, Any]
) -> None:
    """Shapes inside If/Loop/Scan bodies, each inferred again as a graph of its own.

    ONNX infers a body with its enclosing graph's types but without the values computed there,
    so a body that reshapes by a shape read from an outer tensor ends with unknown sizes (Silero
    VAD's branches, torch's EmbeddingBag loops). Lifted out, with the outer tensors it reads as
    concrete inputs (constants as initializers) and its own inputs bound from the node's
    operands, ONNX's data propagation and ORT's symbolic pass both see the sizes.
    """
    from aivmm.models._graph import subgraphs

    scope = dict(constants)
    scope.update({t.name: t for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                scope[node.output[0]] = value
    for node in graph.node:
        for body in subgraphs(node):
            # Folding needs sizes only inference finds, and inference needs the folds: a few rounds.
            for _ in range(4):
                known = sum(_concrete(dims) for _, dims in table.values())
                lifted = _lift(sk, node, body, table, scope) if _incomplete(body, table) else None
                if lifted is None:
                    break
                _infer_lifted(lifted, table)
                if sum(_concrete(dims) for _, dims in table.values()) == known:
                    break
            _refine_subgraphs(sk, body, table, scope)


def _incomplete(body: Any, table: dict[str, tuple[int, tuple[Dim, ...]]]) -> bool:
    """Whether a tensor computed in ``body`` (not in bodies nested in it) lacks a concrete shape."""
    return any(not _concrete(table.get(o, (0, (None,)))[1]) for n in body.node for o in n.output if o)


def _lift(
    sk: Any, node: Any, body: Any, table: dict[str, tuple[int, tuple[Dim, ...]]], constants: dict[str, Any]
) -> Any:
    import onnx
    from onnx import helper

    from aivmm.models._graph import walk_nodes

    formal = [v.name for v in body.input]
    bound: dict[str, tuple[int, tuple[Dim, ...]]] = {}
    if node.op_type == "Loop":  # (iteration, condition, carried...) <- (M, cond, v_initial...)
        bound.update({n: table[i] for n, i in zip(formal[2:], node.input[2:]) if i in table})
    elif node.op_type == "Scan":
        scans = 0
        for a in node.attribute:
            if a.name == "num_scan_inputs":
                scans = a.i
        states = len(node.input) - scans
        axes = next((list(a.ints) for a in node.attribute if a.name == "scan_input_axes"), None) or [0] * scans
        for k, (n, i) in enumerate(zip(formal, node.input)):
            if i not in table:
                continue
            elem, dims = table[i]
            if k >= states:
                axis = axes[k - states] % max(len(dims), 1)
                dims = dims[:axis] + dims[axis + 1 :]
            bound[n] = (elem, dims)
    produced = set(formal) | {t.name for t in body.initializer}
    for inner in walk_nodes(body):
        produced.update(o for o in inner.output if o)
    outer = sorted({i for inner in walk_nodes(body) for i in inner.input if i and i not in produced})
    inits = [constants[name] for name in outer if name in constants and constants[name].data_location != 1]
    inputs = []
    for v in body.input:
        if v.name in bound and _concrete(bound[v.name][1]):
            inputs.append(helper.make_tensor_value_info(v.name, bound[v.name][0], list(bound[v.name][1])))
        else:
            inputs.append(v)
    for name in outer:
        if name in constants and constants[name].data_location != 1:
            continue
        if name not in table:
            return None  # a type the body needs is not known: nothing to gain
        elem, dims = table[name]
        inputs.append(helper.make_tensor_value_info(name, elem, [d if isinstance(d, int) else None for d in dims]))
    graph = helper.make_graph(
        _folded(body, table, constants),
        f"{body.name or 'body'}_lifted",
        inputs,
        list(body.output),
        [*body.initializer, *inits],
    )
    model = onnx.ModelProto()
    model.ir_version = sk.ir_version
    model.opset_import.extend(sk.opset_import)
    model.functions.extend(sk.functions)
    model.graph.CopyFrom(graph)
    return model


def _folded(body: Any, table: dict[str, tuple[int, tuple[Dim, ...]]], constants: dict[str, Any]) -> list[Any]:
    """The body's nodes with every small shape computation (pads, shapes, axes) folded to a Constant.

    ONNX's data propagation covers a handful of ops; exporters build pads and shapes with more
    (ConstantOfShape, Transpose, Range, Where), and a pad of unknown size makes every size after
    it unknown. Computed from the bound shapes, they become constants inference can read.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    from aivmm.models._graph import ConstantValues, GraphIndex

    def shape_of(name: str) -> tuple[int, ...] | None:
        entry = table.get(name)
        return tuple(int(d) for d in entry[1]) if entry and _concrete(entry[1]) else None  # type: ignore[arg-type]

    outer = GraphIndex.of(helper.make_graph([], "outer", [], [], list(constants.values())))
    values = ConstantValues([GraphIndex.of(body), outer], shape_of)
    nodes: list[Any] = []
    for node in body.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            cond = values.value(node.input[0])
            if cond is not None and cond.size == 1:
                # A branch decided by the shapes: inline it, so its output sizes flow on.
                taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
                branch = next(a.g for a in node.attribute if a.name == taken)
                nodes.extend(branch.node)
                nodes.extend(helper.make_node("Identity", [b.name], [o]) for b, o in zip(branch.output, node.output))
                continue
        folded = None
        if node.op_type not in ("Constant", "If", "Loop", "Scan") and len(node.output) == 1 and node.output[0]:
            value = values.value(node.output[0])
            if isinstance(value, np.ndarray) and value.dtype.kind in "iub":
                folded = helper.make_node(
                    "Constant", [], [node.output[0]], value=numpy_helper.from_array(value, node.output[0])
                )
        nodes.append(folded or node)
    return nodes


def _infer_lifted(model: Any, table: dict[str, tuple[int, tuple[Dim, ...]]]) -> None:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return
    _collect(inferred.graph, table)
    if _incomplete(inferred.graph, table):
        _refine(model, table)


def _collect(graph: Any, table: dict[str, tuple[int, tuple[Dim, ...]]]) -> None:
    from aivmm.models._graph import subgraphs

    for value in (*graph.input, *graph.value_info, *graph.output):
        # A tensor of unknown rank is left out: its size is unknown, and () would mean a scalar.
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            _put(table, value.name, (value.type.tensor_type.elem_type, dims_of(value)))
    for t in graph.initializer:
        table[t.name] = (t.data_type, tuple(t.dims))
    for node in graph.node:
        for sub in subgraphs(node):
            _collect(sub, table)


def _put(table: dict[str, tuple[int, tuple[Dim, ...]]], name: str, entry: tuple[int, tuple[Dim, ...]]) -> None:
    # A graph output keeps its declared symbolic dims after inference, and a second pass may know
    # less than the first: a concrete size already found is never replaced by a symbol.
    known = table.get(name)
    if known is None or not _concrete(known[1]) or (_concrete(entry[1]) and len(entry[1]) == len(known[1])):
        table[name] = entry


# Exporters write an unknown as "?" (paddle2onnx), "" or a negative size: none of them names a size
# shared with another dimension, so each is None (its own unknown), never one shared symbol.
_ANONYMOUS_PARAMS = frozenset({"", "?", "-1"})


def dims_of(value: Any) -> tuple[Dim, ...]:
    """Dims of a ValueInfoProto: int, symbolic name, or None (an unknown tied to no other dim)."""
    return tensor_dims(value.type.tensor_type)


def tensor_dims(tt: Any) -> tuple[Dim, ...]:
    """Dims of a TypeProto.Tensor (a graph value's, or a sequence's or optional's element type)."""
    return tuple(
        (d.dim_value if d.dim_value >= 0 else None)
        if d.HasField("dim_value")
        else (None if d.dim_param.strip() in _ANONYMOUS_PARAMS else d.dim_param)
        for d in tt.shape.dim
    )
