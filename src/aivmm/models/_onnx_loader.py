"""ONNX front end: read (``_onnx_file``), validate (``_onnx_checks``), infer shapes, analyse."""

from __future__ import annotations

import collections
import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.errors import InputError, ModelLoadError, UnsupportedModelError
from aivmm.models import _flops, _memory, _params, _shapes
from aivmm.models._categorize import categorize
from aivmm.models._graph import GraphIndex, walk_nodes
from aivmm.models._onnx_checks import check_consistency, check_opsets, check_structure
from aivmm.models._onnx_facts import collect
from aivmm.models._onnx_file import FULL_HASH_LIMIT, ReadModel, read
from aivmm.models._onnx_types import itemsize, to_dtype
from aivmm.models._parsed import ParsedModel
from aivmm.models._spec import Dim, ModelFormat, ModelSpec, TensorSpec, ValueKind

CONTROL_FLOW = _flops.CONTROL_FLOW
QUANTIZED = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "QAttention",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
    }
)


def _signature(model: Any, where: str, kind: str) -> tuple[TensorSpec, ...]:
    init = {t.name for t in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    specs = []
    for value in values:
        if kind == "input" and value.name in init:
            continue  # IR < 4 lists weights as inputs
        specs.append(_value_spec(value, f"{where}: {kind} {value.name!r}"))
    return tuple(specs)


def _value_spec(value: Any, what: str) -> TensorSpec:
    """A graph input or output: a tensor, a sequence of tensors, or an optional tensor or sequence."""
    t = value.type
    box = ValueKind.TENSOR
    if t.HasField("optional_type"):
        box, t = ValueKind.OPTIONAL, t.optional_type.elem_type
    if t.HasField("sequence_type"):
        box = ValueKind.OPTIONAL_SEQUENCE if box is ValueKind.OPTIONAL else ValueKind.SEQUENCE
        t = t.sequence_type.elem_type
    if not t.HasField("tensor_type"):
        found = value.type.WhichOneof("value") or "typeless"
        raise UnsupportedModelError(
            f"{what} is a {found} value ({_type_text(value.type)}); only tensors, sequences of tensors and "
            f"optional tensors or sequences are supported"
        )
    tt = t.tensor_type
    ranked = tt.HasField("shape") or box is ValueKind.TENSOR  # an unshaped tensor stays rank 0, as before
    dims: tuple[Dim, ...] = _shapes.tensor_dims(tt) if tt.HasField("shape") else ()
    return TensorSpec(value.name, to_dtype(tt.elem_type, what), dims, box, ranked)


def _type_text(t: Any) -> str:
    which = t.WhichOneof("value")
    inner = {"sequence_type": lambda: t.sequence_type.elem_type, "optional_type": lambda: t.optional_type.elem_type}
    if which in inner:
        return f"{which.removesuffix('_type')}({_type_text(inner[which]())})"
    return (which or "typeless").removesuffix("_type")


def _infer(
    model: Any, binding: _shapes.Binding, user_shapes: bool, where: str, warnings: list[str]
) -> dict[str, tuple[int, tuple[Dim, ...]]]:
    import onnx

    sk = _shapes.skeleton(model, binding.shapes)
    try:
        return _shapes.infer(sk, strict=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if user_shapes:
            try:  # the model as declared, symbolic dims left symbolic: is it the given shapes that fail?
                _shapes.infer(_shapes.skeleton(model, {}), strict=True)
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
                pass
            else:
                raise InputError(
                    f"{where}: the given input shapes {dict(binding.shapes)} contradict the model: {reason}"
                ) from exc
        warnings.append(f"shape inference stopped early ({reason}); figures cover the shapes it inferred")
    try:
        return _shapes.infer(sk, strict=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
        warnings.append(f"shape inference failed ({exc}); FLOPs and activation memory are not counted")
        return {}


def _concrete(table: Mapping[str, tuple[int, tuple[Dim, ...]]]) -> Callable[[str], tuple[int, ...] | None]:
    def shape_of(name: str) -> tuple[int, ...] | None:
        entry = table.get(name)
        if entry is None or any(not isinstance(d, int) for d in entry[1]):
            return None
        return tuple(int(d) for d in entry[1])  # type: ignore[arg-type]

    return shape_of


def _batch_dim(inputs: Sequence[TensorSpec]) -> int | None:
    """The first axis that is a batch-like symbolic dim in every input (time-major [seq, batch, ...] gives 1)."""
    candidates: set[int] | None = None
    for t in inputs:
        axes = {i for i, d in enumerate(t.shape) if not isinstance(d, int) and _shapes.is_batch_like(d, i)}
        candidates = axes if candidates is None else candidates & axes
    return min(candidates) if candidates else None


def load_onnx(
    path: str | os.PathLike[str], *, shapes: Mapping[str, Sequence[int]] | None = None, name: str | None = None
) -> ModelSpec:
    path = pathlib.Path(path)
    where = str(path)
    loaded = read(path)
    try:
        opsets, custom = check_opsets(loaded.model, where)
        check_structure(loaded.model, path)
        check_consistency(loaded.model, where)
        return analyse(loaded, path=path, shapes=shapes, name=name, opsets=opsets, custom=custom)
    except UnicodeDecodeError as exc:
        # protobuf parses string fields lazily: a corrupt name surfaces only when read.
        raise ModelLoadError(f"{where}: corrupt file: a name or string is not valid UTF-8 ({exc})") from exc


def analyse(
    loaded: ReadModel,
    *,
    path: pathlib.Path,
    shapes: Mapping[str, Sequence[int]] | None,
    name: str | None,
    opsets: dict[str, int],
    custom: tuple[str, ...],
) -> ModelSpec:
    where = str(path)
    model = loaded.model
    warnings: list[str] = []
    if loaded.fingerprinted:
        warnings.append(
            f"external data over {FULL_HASH_LIMIT >> 20} MiB: sha256 covers the model file and a fingerprint of "
            f"the weights (sizes, mtimes, sampled blocks), not every weight byte"
        )
    inputs = _signature(model, where, "input")
    outputs = _signature(model, where, "output")
    signature = "inputs (" + "; ".join(t.describe() for t in inputs) + ")"
    binding = _shapes.bind(inputs, shapes, signature)
    warnings.extend(binding.assumptions)
    table = _infer(model, binding, bool(shapes), where, warnings)
    shape_of = _concrete(table)

    totals = _flops.GraphFlops()
    totals.graph(model.graph, shape_of)
    uncounted = dict(totals.uncounted)
    if uncounted:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))
        warnings.append(f"FLOPs not counted (unknown op or shape) for: {listed}")
    warnings.extend(totals.notes)

    def size_of(tensor: str) -> int | None:
        entry = table.get(tensor)
        s = shape_of(tensor)
        if entry is None or s is None:
            return None
        return math.ceil(math.prod(s) * itemsize(entry[0]))

    index = GraphIndex.of(model.graph)
    peak, unknown = _memory.peak_activation_bytes(index, size_of)
    if unknown:
        warnings.append(
            f"activation size unknown for {len(unknown)} tensor(s) (e.g. {unknown[0]!r}): peak memory is a lower bound"
        )
    params = _params.count(model.graph)
    histogram = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in walk_nodes(model.graph)
    )
    facts = collect(model, dict(histogram))
    if custom:
        warnings.append(f"custom operator domain(s): {', '.join(custom)}; only runtimes that implement them can run it")
    control = tuple(sorted({n.op_type for n in walk_nodes(model.graph) if n.op_type in CONTROL_FLOW}))
    quantized = tuple(sorted({n.op_type for n in walk_nodes(model.graph) if n.op_type in QUANTIZED}))
    # Requests stack along the batch axis only when every input and output is a tensor.
    batch_dim = _batch_dim(inputs) if all(t.is_tensor for t in (*inputs, *outputs)) else None
    if batch_dim is None and inputs:
        warnings.append("no symbolic batch dimension shared by all inputs: requests cannot be batched together")
    return ModelSpec(
        name=name or path.stem,
        format=ModelFormat.ONNX,
        inputs=inputs,
        outputs=outputs,
        parameters=params.parameters,
        parameter_bytes=params.parameter_bytes,
        flops=int(totals.flops),
        macs=int(totals.macs),
        peak_activation_bytes=int(peak),
        operators=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        per_operator_flops=dict(sorted(((k, int(v)) for k, v in totals.per_op.items() if v), key=lambda kv: -kv[1])),
        opsets=opsets,
        custom_domains=custom,
        control_flow=control,
        quantized_operators=quantized,
        categories=categorize(facts),
        shapes_used=binding.shapes,
        source=path,
        sha256=loaded.sha256,
        external_data=bool(loaded.external),
        size_bytes=loaded.size_bytes,
        batch_dim=batch_dim,
        warnings=tuple(warnings),
        parsed=ParsedModel(path, model),  # the one parse, shared until the model is loaded
    )
