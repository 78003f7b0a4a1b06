"""Quantisation: QuantizeLinear / DequantizeLinear (per tensor and per axis), DynamicQuantizeLinear,
and the integer operators (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger).

Integer accumulation runs in float64, which holds every int32 sum of int8 products exactly and
works on every torch device (CUDA has no integer matmul or convolution).
"""

from __future__ import annotations

import torch

from aivmm.backends.torch.lowering._nn import _conv
from aivmm.backends.torch.lowering._node import ONNX_TO_TORCH, NodeContext, Value, elem_name, norm_axis, same_device
from aivmm.backends.torch.lowering._registry import op

_QTYPES = (torch.uint8, torch.int8, torch.uint16, torch.int16, torch.int32)


def _along(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-axis parameter (1-D) shaped to broadcast against ``x`` along ``axis``."""
    if t.dim() == 1 and t.numel() > 1:
        shape = [1] * x.dim()
        shape[norm_axis(axis, x.dim())] = t.numel()
        return t.reshape(shape)
    return t.reshape(()) if t.numel() == 1 else t


def _saturate(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return v.clamp(info.min, info.max).to(dtype)


def _quantize(
    x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int, out_dtype: torch.dtype | None
) -> torch.Tensor:
    x, scale, zp = same_device(x, scale, zp)
    if out_dtype is None:  # the zero point's type is the output type
        assert zp is not None
        out_dtype = zp.dtype
        if out_dtype not in _QTYPES:
            raise TypeError(f"QuantizeLinear to {out_dtype} is not supported")
    s = _along(scale, x, axis).to(torch.float32)
    q = torch.round(x.to(torch.float32) / s)  # round half to even, as ONNX asks
    if zp is not None:
        q = q + _along(zp, x, axis).to(torch.float32)
    return _saturate(q, out_dtype)


def _dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    x, scale, zp = same_device(x, scale, zp)
    v = x.to(torch.float32)
    if zp is not None:
        v = v - _along(zp, x, axis).to(torch.float32)
    return (v * _along(scale, x, axis).to(torch.float32)).to(scale.dtype)


def _quant_type_problem(n: NodeContext, zp_index: int) -> str | None:
    if n.attr("block_size", 0):
        return "blocked quantisation (block_size > 0) is not lowered"
    out = n.attr("output_dtype", 0)
    if out and (out not in ONNX_TO_TORCH or ONNX_TO_TORCH[out] not in _QTYPES):
        return f"quantised type {elem_name(out)} is not lowered (int8/uint8/int16/uint16/int32 are)"
    return None


@op("QuantizeLinear", since=10, refuse=lambda n: _quant_type_problem(n, 2))
def _lower_quantize(n: NodeContext) -> Value:
    zp = n.input(2)
    out = n.attr("output_dtype", 0)
    if isinstance(zp, torch.Tensor):
        dtype = zp.dtype
    elif zp is None:
        dtype = ONNX_TO_TORCH[out] if out else torch.uint8
    else:
        dtype = None  # known when the zero point arrives
    if dtype is not None and dtype not in _QTYPES:
        raise n.fail(f"quantised type {dtype} is not lowered")
    return n.call(_quantize, n.input(0), n.input(1), zp, int(n.attr("axis", 1)), dtype)


@op("DequantizeLinear", since=10, refuse=lambda n: _quant_type_problem(n, 2))
def _lower_dequantize(n: NodeContext) -> Value:
    x = n.input(0)
    if isinstance(x, torch.Tensor) and x.dtype not in _QTYPES:
        raise n.fail(f"quantised type {x.dtype} is not lowered")
    return n.call(_dequantize, x, n.input(1), n.input(2), int(n.attr("axis", 1)))


def _dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xf = x.to(torch.float32)
    lo = torch.clamp(xf.min(), max=0.0)
    hi = torch.clamp(xf.max(), min=0.0)
    scale = (hi - lo) / 255.0
    zp = _saturate(torch.round(-lo / scale), torch.uint8)
    y = _saturate(torch.round(xf / scale) + zp.to(torch.float32), torch.uint8)
    return y, scale.to(x.dtype), zp


@op("DynamicQuantizeLinear", since=11)
def _lower_dynamic_quantize(n: NodeContext) -> list[Value]:
    return n.call_multi(_dynamic_quantize, 3, n.input(0))


def _centered(x: torch.Tensor, zp: torch.Tensor | None, axis: int | None) -> torch.Tensor:
    v = x.to(torch.float64)
    if zp is None:
        return v
    z = zp.to(torch.float64)
    if axis is not None:
        z = _along(z, x, axis)
    return v - z


def _matmul_integer(
    a: torch.Tensor, b: torch.Tensor, azp: torch.Tensor | None, bzp: torch.Tensor | None
) -> torch.Tensor:
    a, b, azp, bzp = same_device(a, b, azp, bzp)
    av = _centered(a, azp, -2 if azp is not None and azp.numel() > 1 else None)
    if azp is not None and azp.numel() > 1:
        av = a.to(torch.float64) - azp.to(torch.float64).reshape(-1, 1)
    bv = _centered(b, bzp, None)
    return torch.matmul(av, bv).to(torch.int32)


@op("MatMulInteger", since=10)
def _lower_matmul_integer(n: NodeContext) -> Value:
    return n.call(_matmul_integer, n.input(0), n.input(1), n.input(2), n.input(3))


def _conv_integer(
    x: torch.Tensor, w: torch.Tensor, xzp: torch.Tensor | None, wzp: torch.Tensor | None, conv_args: tuple
) -> torch.Tensor:
    x, w, xzp, wzp = same_device(x, w, xzp, wzp)
    xv = _centered(x, xzp, None)
    wv = _centered(w, wzp, 0)
    return _conv(xv, wv, None, *conv_args).round().to(torch.int32)


def _conv_args(n: NodeContext) -> tuple:
    def ints(name: str) -> list[int] | None:
        v = n.attr(name)
        return None if v is None else [int(i) for i in v]

    return (ints("strides"), ints("pads"), ints("dilations"), int(n.attr("group", 1)), n.attr("auto_pad", "NOTSET"))


@op("ConvInteger", since=10)
def _lower_conv_integer(n: NodeContext) -> Value:
    return n.call(_conv_integer, n.input(0), n.input(1), n.input(2), n.input(3), _conv_args(n))


def _requantize(
    acc: torch.Tensor, multiplier: torch.Tensor, yzp: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    y = torch.round(acc * multiplier)
    if yzp is not None:
        y = y + yzp.to(torch.float64)
    return _saturate(y, out_dtype)


def _qlinear_matmul(
    a: torch.Tensor,
    a_s: torch.Tensor,
    azp: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    bzp: torch.Tensor,
    y_s: torch.Tensor,
    yzp: torch.Tensor,
) -> torch.Tensor:
    a, a_s, azp, b, b_s, bzp, y_s, yzp = same_device(a, a_s, azp, b, b_s, bzp, y_s, yzp)
    av = a.to(torch.float64) - (azp.to(torch.float64).reshape(-1, 1) if azp.numel() > 1 else azp.to(torch.float64))
    bv = b.to(torch.float64) - bzp.to(torch.float64)
    acc = torch.matmul(av, bv)
    a_scale = a_s.to(torch.float64).reshape(-1, 1) if a_s.numel() > 1 else a_s.to(torch.float64)
    multiplier = a_scale * b_s.to(torch.float64) / y_s.to(torch.float64)
    return _requantize(acc, multiplier, yzp, yzp.dtype)


@op("QLinearMatMul", since=10)
def _lower_qlinear_matmul(n: NodeContext) -> Value:
    return n.call(_qlinear_matmul, *[n.input(i) for i in range(8)])


def _qlinear_conv(
    x: torch.Tensor,
    x_s: torch.Tensor,
    xzp: torch.Tensor,
    w: torch.Tensor,
    w_s: torch.Tensor,
    wzp: torch.Tensor,
    y_s: torch.Tensor,
    yzp: torch.Tensor,
    bias: torch.Tensor | None,
    conv_args: tuple,
) -> torch.Tensor:
    x, x_s, xzp, w, w_s, wzp, y_s, yzp, bias = same_device(x, x_s, xzp, w, w_s, wzp, y_s, yzp, bias)
    acc = _conv(_centered(x, xzp, None), _centered(w, wzp, 0), None, *conv_args)
    if bias is not None:
        acc = acc + bias.to(torch.float64).reshape([1, -1] + [1] * (acc.dim() - 2))
    w_scale = w_s.to(torch.float64)
    if w_scale.numel() > 1:
        w_scale = w_scale.reshape([1, -1] + [1] * (acc.dim() - 2))
    multiplier = x_s.to(torch.float64) * w_scale / y_s.to(torch.float64)
    return _requantize(acc, multiplier, yzp, yzp.dtype)


@op("QLinearConv", since=10)
def _lower_qlinear_conv(n: NodeContext) -> Value:
    args = [n.input(i) for i in range(9)]
    return n.call(_qlinear_conv, *args, _conv_args(n))
