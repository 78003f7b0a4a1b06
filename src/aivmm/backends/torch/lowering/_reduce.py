"""Reductions with both axis styles (attribute before opset 13/18, input after), keepdims and
noop_with_empty_axes; reductions over an empty set give the operator's identity."""

from __future__ import annotations

import math

import torch

from aivmm.backends.torch.lowering._node import Ints, NodeContext, Value, as_ints, norm_axis
from aivmm.backends.torch.lowering._registry import op

# Opset from which each reduction takes its axes as an input rather than an attribute.
_AXES_INPUT_SINCE = {
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 18,
    "ReduceLogSumExp": 18,
    "ReduceSumSquare": 18,
}
_EMPTY = {
    "ReduceSum": 0.0,
    "ReduceProd": 1.0,
    "ReduceMax": -math.inf,
    "ReduceMin": math.inf,
    "ReduceL1": 0.0,
    "ReduceL2": 0.0,
    "ReduceSumSquare": 0.0,
    "ReduceLogSum": -math.inf,
    "ReduceLogSumExp": -math.inf,
    "ReduceMean": math.nan,
}


def _reduce(x: torch.Tensor, axes: Ints | None, keepdims: bool, noop: bool, kind: str) -> torch.Tensor:
    axes_l = as_ints(axes) if axes is not None else []
    if not axes_l and noop:
        return x
    dims = sorted({norm_axis(a, x.dim()) for a in axes_l}) if axes_l else list(range(x.dim()))
    if any(x.shape[d] == 0 for d in dims):
        shape = [1 if d in dims else s for d, s in enumerate(x.shape) if keepdims or d not in dims]
        fill = _EMPTY[kind]
        if x.dtype == torch.bool:
            return torch.full(shape, fill > 0 if math.isinf(fill) else bool(fill), dtype=x.dtype, device=x.device)
        if not x.is_floating_point() and math.isinf(fill):
            info = torch.iinfo(x.dtype)
            fill = info.min if fill < 0 else info.max
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
    if not dims:
        return x.clone()
    src = x
    if x.dtype == torch.bool:
        src = x.to(torch.int64)
    if kind == "ReduceSum":
        y = src.sum(dims, keepdim=keepdims)
    elif kind == "ReduceMean":
        y = src.mean(dims, keepdim=keepdims)
    elif kind == "ReduceMax":
        y = src.amax(dims, keepdim=keepdims)
    elif kind == "ReduceMin":
        y = src.amin(dims, keepdim=keepdims)
    elif kind == "ReduceProd":
        y = src
        for d in reversed(dims):
            y = y.prod(d, keepdim=keepdims)
    elif kind == "ReduceL1":
        y = src.abs().sum(dims, keepdim=keepdims)
    elif kind == "ReduceL2":
        y = torch.sqrt((src * src).sum(dims, keepdim=keepdims))
    elif kind == "ReduceSumSquare":
        y = (src * src).sum(dims, keepdim=keepdims)
    elif kind == "ReduceLogSum":
        y = torch.log(src.sum(dims, keepdim=keepdims))
    else:
        y = torch.logsumexp(src, dims, keepdim=keepdims)
    return y if y.dtype == x.dtype else y.to(x.dtype)


@op(*_AXES_INPUT_SINCE, since=1)
def _lower_reduce(n: NodeContext) -> Value:
    keepdims = bool(n.attr("keepdims", 1))
    noop = bool(n.attr("noop_with_empty_axes", 0))
    if n.opset >= _AXES_INPUT_SINCE[n.op_type]:
        axes = n.ints(1) if n.has_input(1) else None
        return n.call(_reduce, n.input(0), axes, keepdims, noop, n.op_type)
    axes_attr = n.attr("axes")
    axes = tuple(int(a) for a in axes_attr) if axes_attr is not None else None
    return n.call(_reduce, n.input(0), axes, keepdims, False, n.op_type)
