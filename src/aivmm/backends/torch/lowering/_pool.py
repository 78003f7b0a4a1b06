"""Pooling: MaxPool (with indices), AveragePool (count_include_pad, ceil_mode), LpPool, global pools."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._nn import resolve_pads, torch_pads
from aivmm.backends.torch.lowering._node import NodeContext, Value
from aivmm.backends.torch.lowering._registry import op

# By rank; called positionally with the arguments all three ranks take.
_MAX: dict[int, Callable[..., Any]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG: dict[int, Callable[..., torch.Tensor]] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _ints_attr(n: NodeContext, name: str) -> list[int] | None:
    v = n.attr(name)
    return None if v is None else [int(i) for i in v]


def _ravel(coords: list[torch.Tensor], dims: list[int], column_major: bool) -> torch.Tensor:
    order = list(reversed(range(len(dims)))) if column_major else list(range(len(dims)))
    flat = torch.zeros_like(coords[0])
    for axis in order:
        flat = flat * dims[axis] + coords[axis]
    return flat


def _unravel(flat: torch.Tensor, dims: list[int]) -> list[torch.Tensor]:
    coords = []
    for d in reversed(dims):
        coords.append(flat % d)
        flat = flat // d
    return list(reversed(coords))


def _max_pool(
    x: torch.Tensor,
    kernel: list[int],
    strides: list[int] | None,
    pads: list[int] | None,
    dilations: list[int] | None,
    ceil_mode: bool,
    auto_pad: str,
    want_indices: bool,
    column_major: bool,
) -> tuple[torch.Tensor, ...]:
    nd = x.dim() - 2
    strides = strides or [1] * nd
    dilations = dilations or [1] * nd
    p = resolve_pads(x, kernel, strides, pads, dilations, auto_pad)
    begins, ends = p[:nd], p[nd:]
    dtype = x.dtype
    if not x.is_floating_point():
        x = x.to(torch.float64)  # torch pools floats only; float64 holds every int up to 2**53 exactly
    sizes = list(x.shape[2:])
    manual = begins != ends or any(b * 2 > k for b, k in zip(begins, kernel))
    if manual:
        x = F.pad(x, torch_pads(begins, ends), value=-math.inf)
        padding = [0] * nd
    else:
        padding = begins
    out = _MAX[nd](x, kernel, strides, padding, dilations, ceil_mode, return_indices=want_indices)
    if manual and ceil_mode:
        out = tuple(
            _drop_pad_windows(t, sizes, kernel, strides, dilations, begins, ends)
            for t in (out if want_indices else (out,))
        )
        out = out if want_indices else out[0]
    if not want_indices:
        return (out.to(dtype),)
    y, idx = out
    padded = list(x.shape[2:])
    coords = _unravel(idx, padded)
    if manual:
        coords = [c - b for c, b in zip(coords, begins)]
    flat = _ravel(coords, sizes, column_major)
    plane = math.prod(sizes)
    base = torch.arange(idx.shape[0] * idx.shape[1], device=idx.device).reshape(idx.shape[0], idx.shape[1])
    flat = flat + (base * plane).reshape(idx.shape[:2] + (1,) * nd)
    return y.to(dtype), flat


def ceil_sizes(
    sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], begins: list[int], ends: list[int]
) -> list[int]:
    """Output sizes in ceil mode, without windows that would start inside the end padding."""
    out = []
    for i, k, s, d, b, e in zip(sizes, kernel, strides, dilations, begins, ends):
        o = -(-(i + b + e - ((k - 1) * d + 1)) // s) + 1
        if (o - 1) * s >= i + b:
            o -= 1
        out.append(o)
    return out


def _drop_pad_windows(
    t: torch.Tensor,
    sizes: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    begins: list[int],
    ends: list[int],
) -> torch.Tensor:
    # Pads applied by hand look like input to torch, which then keeps windows that start in them.
    for axis, o in enumerate(ceil_sizes(sizes, kernel, strides, dilations, begins, ends)):
        t = t.narrow(axis + 2, 0, min(o, t.shape[axis + 2]))
    return t


def _refuse_pool(n: NodeContext) -> str | None:
    kernel = n.attr("kernel_shape")
    if kernel is None or not 1 <= len(kernel) <= 3:
        return "pooling needs kernel_shape of 1, 2 or 3 dims"
    auto_pad = n.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"unknown auto_pad {auto_pad!r}"
    if n.op_type != "MaxPool" and any(d != 1 for d in (n.attr("dilations") or [])):
        return f"{n.op_type} with dilations: torch average pooling has no dilation"
    return None


@op("MaxPool", since=1, refuse=_refuse_pool)
def _lower_max_pool(n: NodeContext) -> list[Value]:
    want = n.output_used(1)
    return n.call_multi(
        _max_pool,
        2 if want else 1,
        n.input(0),
        [int(k) for k in n.attr("kernel_shape")],
        _ints_attr(n, "strides"),
        _ints_attr(n, "pads"),
        _ints_attr(n, "dilations"),
        bool(n.attr("ceil_mode", 0)),
        n.attr("auto_pad", "NOTSET"),
        want,
        bool(n.attr("storage_order", 0)),
    )


def _window_sum(x: torch.Tensor, kernel: list[int], strides: list[int], ceil_mode: bool) -> torch.Tensor:
    nd = len(kernel)
    if nd == 1:  # avg_pool1d lacks divisor_override: pool a height-1 image instead
        return _window_sum(x.unsqueeze(2), [1, *kernel], [1, *strides], ceil_mode).squeeze(2)
    return _AVG[nd](x, kernel, strides, 0, ceil_mode, True, 1)


def _avg_pool(
    x: torch.Tensor,
    kernel: list[int],
    strides: list[int] | None,
    pads: list[int] | None,
    ceil_mode: bool,
    include_pad: bool,
    auto_pad: str,
    p_norm: int | None,
) -> torch.Tensor:
    nd = x.dim() - 2
    strides = strides or [1] * nd
    p = resolve_pads(x, kernel, strides, pads, [1] * nd, auto_pad)
    begins, ends = p[:nd], p[nd:]
    if p_norm is not None:
        powered = x.abs() ** p_norm
        out = _window_sum(F.pad(powered, torch_pads(begins, ends)), kernel, strides, ceil_mode) ** (1.0 / p_norm)
        if ceil_mode:
            out = _drop_pad_windows(out, list(x.shape[2:]), kernel, strides, [1] * nd, begins, ends)
        return out
    # Sum of the window over the count of elements that lie in the input (or its pads, when counted).
    sums = _window_sum(F.pad(x, torch_pads(begins, ends)), kernel, strides, ceil_mode)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    mask = F.pad(ones, torch_pads(begins, ends), value=1.0 if include_pad else 0.0)
    counts = _window_sum(mask, kernel, strides, ceil_mode)
    out = sums / counts
    if ceil_mode:
        out = _drop_pad_windows(out, list(x.shape[2:]), kernel, strides, [1] * nd, begins, ends)
    return out


@op("AveragePool", since=7, refuse=_refuse_pool)
def _lower_avg_pool(n: NodeContext) -> Value:
    return n.call(
        _avg_pool,
        n.input(0),
        [int(k) for k in n.attr("kernel_shape")],
        _ints_attr(n, "strides"),
        _ints_attr(n, "pads"),
        bool(n.attr("ceil_mode", 0)),
        bool(n.attr("count_include_pad", 0)),
        n.attr("auto_pad", "NOTSET"),
        None,
    )


@op("LpPool", since=11, refuse=_refuse_pool)
def _lower_lp_pool(n: NodeContext) -> Value:
    return n.call(
        _avg_pool,
        n.input(0),
        [int(k) for k in n.attr("kernel_shape")],
        _ints_attr(n, "strides"),
        _ints_attr(n, "pads"),
        bool(n.attr("ceil_mode", 0)),
        True,
        n.attr("auto_pad", "NOTSET"),
        int(n.attr("p", 2)),
    )


def _global_pool(x: torch.Tensor, kind: str, p: int) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    if kind == "GlobalAveragePool":
        return x.mean(dims, keepdim=True)
    if kind == "GlobalMaxPool":
        return x.amax(dims, keepdim=True)
    return torch.linalg.vector_norm(x, p, dim=dims, keepdim=True)


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", since=1)
def _lower_global_pool(n: NodeContext) -> Value:
    return n.call(_global_pool, n.input(0), n.op_type, int(n.attr("p", 2)))
