"""Elementwise math and logic with numpy broadcasting, Cast, Where, Constant, Identity, Dropout."""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx
import torch

from aivmm.backends.torch.lowering._node import (
    FLOAT_TYPES,
    ONNX_TO_TORCH,
    NodeContext,
    Value,
    elem_name,
    same_device,
)
from aivmm.backends.torch.lowering._registry import op

_INT_TYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64)


# torch has few kernels for uint16 / uint32: compute in int64 (which holds them exactly), cast back.
_NARROW_UNSIGNED = (torch.uint16, torch.uint32)


def widened(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    dtype = xs[0].dtype
    if dtype not in _NARROW_UNSIGNED:
        return fn(*xs)
    out = fn(*[x.to(torch.int64) for x in xs])
    return out.to(dtype) if out.dtype == torch.int64 else out


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = same_device(a, b)
        return widened(fn, a, b)

    impl.__name__ = f"onnx_{getattr(fn, '__name__', 'binary')}"
    return impl


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype in _INT_TYPES:
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates toward zero
    return torch.div(a, b)


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)  # ONNX: the result has the base's type


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}
_BINARY_IMPL = {name: _binary(fn) for name, fn in _BINARY.items()}


@op(*_BINARY, since=7)
def _lower_binary(n: NodeContext) -> Value:
    return n.call(_BINARY_IMPL[n.op_type], n.input(0), n.input(1))


def _mod_py(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = same_device(a, b)
    return widened(torch.remainder, a, b)


def _mod_c(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = same_device(a, b)
    return torch.fmod(a, b)


@op("Mod", since=10)
def _lower_mod(n: NodeContext) -> Value:
    return n.call(_mod_c if n.attr("fmod", 0) else _mod_py, n.input(0), n.input(1))


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Erf": torch.erf,
    "Sign": torch.sign,
    "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not,
    "IsNaN": torch.isnan,
}


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def impl(x: torch.Tensor) -> torch.Tensor:
        return widened(fn, x)

    impl.__name__ = f"onnx_{getattr(fn, '__name__', 'unary')}"
    return impl


_UNARY_IMPL = {name: _unary(fn) for name, fn in _UNARY.items()}


@op(*_UNARY, since=6)
def _lower_unary(n: NodeContext) -> Value:
    return n.call(_UNARY_IMPL[n.op_type], n.input(0))


def _isinf(x: torch.Tensor, negative: bool, positive: bool) -> torch.Tensor:
    if negative and positive:
        return torch.isinf(x)
    if positive:
        return torch.isposinf(x)
    if negative:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@op("IsInf", since=10)
def _lower_isinf(n: NodeContext) -> Value:
    return n.call(_isinf, n.input(0), bool(n.attr("detect_negative", 1)), bool(n.attr("detect_positive", 1)))


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def impl(*xs: torch.Tensor) -> torch.Tensor:
        return functools.reduce(lambda a, b: widened(fn, *same_device(a, b)), xs)

    return impl


_sum = _variadic(torch.add)
_max = _variadic(torch.maximum)
_min = _variadic(torch.minimum)


def _mean(*xs: torch.Tensor) -> torch.Tensor:
    return _sum(*xs) / len(xs)


@op("Sum", "Max", "Min", "Mean", since=8)
def _lower_variadic(n: NodeContext) -> Value:
    fn = {"Sum": _sum, "Max": _max, "Min": _min, "Mean": _mean}[n.op_type]
    return n.call(fn, *[n.input(i) for i in range(n.n_inputs) if n.has_input(i)])


def _bitshift(x: torch.Tensor, s: torch.Tensor, left: bool) -> torch.Tensor:
    x, s = same_device(x, s)
    if x.dtype == torch.uint64:
        # torch shifts uint64 poorly: shift the same bits as int64, then clear sign-extended bits.
        xi, si = x.view(torch.int64), s.to(torch.int64)
        if left:
            return torch.bitwise_left_shift(xi, si).view(torch.uint64)
        shifted = torch.bitwise_right_shift(xi, si)
        mask = torch.where(si > 0, torch.bitwise_left_shift(torch.ones_like(si), 64 - si) - 1, -1)
        return torch.bitwise_and(shifted, mask).view(torch.uint64)
    wide = x.to(torch.int64)
    s = s.to(torch.int64)
    out = torch.bitwise_left_shift(wide, s) if left else torch.bitwise_right_shift(wide, s)
    bits = torch.iinfo(x.dtype).bits
    return torch.bitwise_and(out, (1 << bits) - 1).to(x.dtype)


@op("BitShift", since=11)
def _lower_bitshift(n: NodeContext) -> Value:
    return n.call(_bitshift, n.input(0), n.input(1), n.attr("direction") == "LEFT")


def _where(c: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    c, x, y = same_device(c, x, y)
    return torch.where(c, x, y)


@op("Where", since=9)
def _lower_where(n: NodeContext) -> Value:
    return n.call(_where, n.input(0), n.input(1), n.input(2))


def _shrink(x: torch.Tensor, bias: float, lambd: float) -> torch.Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@op("Shrink", since=9)
def _lower_shrink(n: NodeContext) -> Value:
    return n.call(_shrink, n.input(0), float(n.attr("bias", 0.0)), float(n.attr("lambd", 0.5)))


# -- casts and constants -------------------------------------------------------------------


def target_dtype(n: NodeContext, elem_type: int) -> torch.dtype:
    dtype = ONNX_TO_TORCH[elem_type]
    # In fp16/bf16 configurations every float type computes in the configured precision.
    if dtype in FLOAT_TYPES and n.float_dtype != torch.float32:
        return n.float_dtype
    return dtype


def _refuse_cast(n: NodeContext) -> str | None:
    to = n.attr("to")
    if to == onnx.TensorProto.UINT64:
        return "torch has almost no arithmetic for uint64"
    if to is not None and to not in ONNX_TO_TORCH:
        return f"casting to {elem_name(to)} is not supported by torch"
    return None


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


@op("Cast", since=6, refuse=_refuse_cast)
def _lower_cast(n: NodeContext) -> Value:
    return n.call(_cast, n.input(0), target_dtype(n, n.attr("to")))


def _cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == like.dtype else x.to(like.dtype)


@op("CastLike", since=15)
def _lower_cast_like(n: NodeContext) -> Value:
    return n.call(_cast_like, n.input(0), n.input(1))


def _refuse_constant(n: NodeContext) -> str | None:
    if n.has_attr("sparse_value"):
        return "sparse constants are not supported"
    if n.has_attr("value_string") or n.has_attr("value_strings"):
        return "string constants are not supported by torch"
    value = n.node.attribute[0] if n.node.attribute else None
    if value is not None and value.name == "value" and value.t.data_type not in ONNX_TO_TORCH:
        return f"constant of element type {elem_name(value.t.data_type)} is not supported by torch"
    return None


@op("Constant", since=1, refuse=_refuse_constant)
def _lower_constant(n: NodeContext) -> Value:
    if n.has_attr("value"):
        return n.attr("value")
    if n.has_attr("value_float"):
        return torch.tensor(n.attr("value_float"), dtype=torch.float32)
    if n.has_attr("value_floats"):
        return torch.tensor(list(n.attr("value_floats")), dtype=torch.float32)
    if n.has_attr("value_int"):
        return torch.tensor(n.attr("value_int"), dtype=torch.int64)
    if n.has_attr("value_ints"):
        return torch.tensor(list(n.attr("value_ints")), dtype=torch.int64)
    raise n.fail("Constant without a supported value attribute")


@op("Identity", since=1)
def _lower_identity(n: NodeContext) -> Value:
    return n.input(0)


def _refuse_dropout(n: NodeContext) -> str | None:
    if n.has_input(2):
        return "a training_mode input is given; only inference Dropout (no training_mode) is lowered"
    return None


def _dropout_mask(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x, dtype=torch.bool)


@op("Dropout", since=7, refuse=_refuse_dropout)
def _lower_dropout(n: NodeContext) -> list[Value]:
    x = n.input(0)
    return [x, n.call(_dropout_mask, x)] if n.output_used(1) else [x]
