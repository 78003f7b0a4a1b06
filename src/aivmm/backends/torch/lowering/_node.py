"""What a lowering sees of one ONNX node: its attributes, its inputs as values, and ``call``.

A value is an ``fx.Node`` (known only at run time), a ``torch.Tensor`` (known now: an initializer,
a Constant, or something folded from them) or ``None`` (an omitted optional input). ``call``
folds a function whose arguments are all known now, so shape arithmetic on constants never
reaches the graph; otherwise it adds a ``call_function`` node.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import onnx
import torch
from onnx import helper, numpy_helper
from torch import fx

from aivmm.errors import LoweringError

if TYPE_CHECKING:
    from typing_extensions import TypeVarTuple, Unpack

    from aivmm.backends.torch.lowering._builder import GraphBuilder

    # same_device keeps each argument's type (a Tensor stays a Tensor, an optional stays optional).
    _Ts = TypeVarTuple("_Ts")

Value = fx.Node | torch.Tensor | None
# An integer vector (shape, axes, pads) as a lowering-time tuple or a run-time tensor.
Ints = Sequence[int] | torch.Tensor


def _has_node(obj: Any) -> bool:
    if isinstance(obj, fx.Node):
        return True
    if isinstance(obj, list | tuple):
        return any(_has_node(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_node(o) for o in obj.values())
    return False


class NodeContext:
    """One ONNX node being lowered (``builder`` set) or statically checked (``builder`` None)."""

    def __init__(self, node: onnx.NodeProto, opset: int, builder: GraphBuilder | None = None) -> None:
        self.node = node
        self.opset = opset
        self.builder = builder
        self._attrs = {a.name: a for a in node.attribute}

    # -- identity --------------------------------------------------------------------------
    @property
    def op_type(self) -> str:
        return self.node.op_type

    def where(self) -> str:
        name = f" {self.node.name!r}" if self.node.name else ""
        domain = self.node.domain or "ai.onnx"
        return f"{self.node.op_type}{name} (domain {domain!r}, opset {self.opset})"

    def fail(self, problem: str) -> LoweringError:
        return LoweringError(f"cannot lower {self.where()}: {problem}")

    # -- attributes ------------------------------------------------------------------------
    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        proto = self._attrs.get(name)
        if proto is None:
            return default
        if proto.ref_attr_name:
            raise self.fail(f"attribute {name!r} refers to a function attribute; model-local functions are not lowered")
        value = helper.get_attribute_value(proto)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode("utf-8") for v in value]
        if isinstance(value, onnx.TensorProto):
            return tensor_from_proto(value)
        return value

    def graph_attr(self, name: str) -> onnx.GraphProto:
        proto = self._attrs.get(name)
        if proto is None or proto.type != onnx.AttributeProto.GRAPH:
            raise self.fail(f"missing graph attribute {name!r}")
        return proto.g

    # -- inputs and outputs ----------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    @property
    def n_outputs(self) -> int:
        return len(self.node.output)

    def output_used(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    def input(self, i: int) -> Value:
        if not self.has_input(i):
            return None
        assert self.builder is not None
        return self.builder.value(self.node.input[i])

    def inputs(self) -> list[Value]:
        return [self.input(i) for i in range(self.n_inputs)]

    def const(self, i: int) -> torch.Tensor | None:
        """Input ``i`` when it is known at lowering time, else None."""
        v = self.input(i)
        return v if isinstance(v, torch.Tensor) else None

    def ints(self, i: int) -> tuple[int, ...] | fx.Node | None:
        """An integer-vector input as a Python tuple when known now (keeps shapes out of the graph)."""
        v = self.input(i)
        if isinstance(v, torch.Tensor):
            return tuple(int(x) for x in v.reshape(-1).tolist())
        return v

    def scalar(self, i: int) -> Any:
        """A scalar input as a Python number when known now, else the node."""
        v = self.input(i)
        if isinstance(v, torch.Tensor):
            return v.reshape(-1)[0].item() if v.numel() else None
        return v

    # -- graph construction ----------------------------------------------------------------
    @property
    def float_dtype(self) -> torch.dtype:
        assert self.builder is not None
        return self.builder.float_dtype

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Value:
        assert self.builder is not None
        return self.builder.call(fn, args, kwargs)

    def call_multi(self, fn: Callable[..., Any], n: int, *args: Any, **kwargs: Any) -> list[Value]:
        assert self.builder is not None
        return self.builder.call_multi(fn, n, args, kwargs)


# Functions whose result is shape arithmetic even when an input lives on the device (Shape of a
# device tensor): GraphBuilder.call keeps their nodes on the host.
HOST_RESULTS: set[Callable[..., Any]] = set()
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def host_result(fn: _Fn) -> _Fn:
    HOST_RESULTS.add(fn)
    return fn


def tensor_from_proto(proto: onnx.TensorProto) -> torch.Tensor:
    """An ONNX tensor as a torch tensor on the host (bfloat16 kept as bfloat16)."""
    if proto.data_type == onnx.TensorProto.BFLOAT16:
        bits = numpy_helper.to_array(proto).view("uint16").astype("int32") << 16
        return torch.from_numpy(bits.view("float32").copy()).to(torch.bfloat16)
    if proto.data_type not in ONNX_TO_TORCH:
        raise LoweringError(
            f"tensor {proto.name!r} has element type {onnx.TensorProto.DataType.Name(proto.data_type)}, "
            "which torch cannot hold"
        )
    array = numpy_helper.to_array(proto)
    return torch.from_numpy(array.copy())


ONNX_TO_TORCH: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
}

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def elem_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def as_ints(v: Sequence[int] | torch.Tensor | None) -> list[int]:
    """Integers from a tuple known at lowering time or a tensor known only at run time."""
    if v is None:
        return []
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.reshape(-1).tolist()]
    return [int(x) for x in v]


_CAPTURE_KEEP: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar(
    "aivmm_capture_keep", default=None
)


@contextlib.contextmanager
def keeping_host_copies() -> Iterator[list[torch.Tensor]]:
    """While a CUDA graph is captured: host values that meet device tensors are copied from pinned
    buffers (a pageable copy cannot be captured), kept alive in the yielded list for the graph's
    replays. Host values come from shape arithmetic alone, and a graph is captured per input shape,
    so every replay needs the very values computed at capture."""
    keep: list[torch.Tensor] = []
    token = _CAPTURE_KEEP.set(keep)
    try:
        yield keep
    finally:
        _CAPTURE_KEEP.reset(token)


def same_device(*tensors: Unpack[_Ts]) -> tuple[Unpack[_Ts]]:
    """Move host-side helper tensors (shape arithmetic lives on the host) next to device tensors."""
    given = cast("tuple[torch.Tensor | None, ...]", tensors)
    device = None
    for t in given:
        if t is not None and t.device.type != "cpu":
            device = t.device
            break
    if device is None:
        return tensors
    keep = _CAPTURE_KEEP.get()
    out: list[torch.Tensor | None] = []
    for t in given:
        if t is not None and t.device != device:
            if keep is not None and t.device.type == "cpu":
                t = t.pin_memory()
                keep.append(t)
                t = t.to(device, non_blocking=True)
            else:
                t = t.to(device)
        out.append(t)
    return cast("tuple[Unpack[_Ts]]", tuple(out))
