"""Shape, indexing and generator operators.

Shape vectors live on the host (``Shape`` returns a CPU int64 tensor), so reshapes driven by them
read Python integers without a device sync; tensors meet device tensors through ``same_device``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._elementwise import target_dtype
from aivmm.backends.torch.lowering._node import Ints, NodeContext, Value, as_ints, host_result, norm_axis, same_device
from aivmm.backends.torch.lowering._registry import op


@host_result
def _shape(x: torch.Tensor, start: int, end: int | None) -> torch.Tensor:
    return torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64)


@op("Shape", since=1)
def _lower_shape(n: NodeContext) -> Value:
    x = n.input(0)
    start = int(n.attr("start", 0))
    end = n.attr("end")
    if isinstance(x, torch.Tensor):
        return _shape(x, start, end)
    return n.call(_shape, x, start, None if end is None else int(end))


@host_result
def _size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Size", since=1)
def _lower_size(n: NodeContext) -> Value:
    return n.call(_size, n.input(0))


def _reshape(x: torch.Tensor, shape: tuple[int, ...] | torch.Tensor, allowzero: bool) -> torch.Tensor:
    dims = as_ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Reshape", since=5)
def _lower_reshape(n: NodeContext) -> Value:
    return n.call(_reshape, n.input(0), n.ints(1), bool(n.attr("allowzero", 0)))


def _flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = norm_axis(axis, x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Flatten", since=1)
def _lower_flatten(n: NodeContext) -> Value:
    return n.call(_flatten, n.input(0), int(n.attr("axis", 1)))


def _transpose(x: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(range(x.dim() - 1, -1, -1)))


@op("Transpose", since=1)
def _lower_transpose(n: NodeContext) -> Value:
    perm = n.attr("perm")
    return n.call(_transpose, n.input(0), None if perm is None else [int(p) for p in perm])


def _squeeze(x: torch.Tensor, axes: tuple[int, ...] | torch.Tensor | None) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    dims = [norm_axis(a, x.dim()) for a in as_ints(axes)]
    return x.squeeze(dims) if dims else x


def _unsqueeze(x: torch.Tensor, axes: tuple[int, ...] | torch.Tensor) -> torch.Tensor:
    dims = as_ints(axes)
    rank = x.dim() + len(dims)
    for d in sorted(norm_axis(a, rank) for a in dims):
        x = x.unsqueeze(d)
    return x


@op("Squeeze", since=1)
def _lower_squeeze(n: NodeContext) -> Value:
    if n.opset < 13:
        axes = n.attr("axes")
        return n.call(_squeeze, n.input(0), None if axes is None else tuple(axes))
    return n.call(_squeeze, n.input(0), n.ints(1) if n.has_input(1) else None)


@op("Unsqueeze", since=1)
def _lower_unsqueeze(n: NodeContext) -> Value:
    axes = tuple(n.attr("axes", ())) if n.opset < 13 else n.ints(1)
    return n.call(_unsqueeze, n.input(0), axes)


def _concat(axis: int, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(same_device(*xs), norm_axis(axis, xs[0].dim()))


@op("Concat", since=4)
def _lower_concat(n: NodeContext) -> Value:
    return n.call(_concat, int(n.attr("axis")), *[n.input(i) for i in range(n.n_inputs) if n.has_input(i)])


def _split(x: torch.Tensor, axis: int, sizes: tuple[int, ...] | torch.Tensor | None, count: int) -> tuple:
    axis = norm_axis(axis, x.dim())
    if sizes is None:
        return torch.split(x, math.ceil(x.shape[axis] / count), dim=axis)
    return torch.split(x, as_ints(sizes), dim=axis)


@op("Split", since=2)
def _lower_split(n: NodeContext) -> list[Value]:
    if n.opset < 13:
        sizes = n.attr("split")
        sizes = tuple(sizes) if sizes else None
    else:
        sizes = n.ints(1) if n.has_input(1) else None
    count = int(n.attr("num_outputs", n.n_outputs))
    return n.call_multi(_split, n.n_outputs, n.input(0), int(n.attr("axis", 0)), sizes, count)


def _slice(x: torch.Tensor, starts: Ints, ends: Ints, axes: Ints | None, steps: Ints | None) -> torch.Tensor:
    starts_l, ends_l = as_ints(starts), as_ints(ends)
    axes_l = as_ints(axes) if axes is not None else list(range(len(starts_l)))
    steps_l = as_ints(steps) if steps is not None else [1] * len(starts_l)
    index: list[slice] = [slice(None)] * x.dim()
    reversed_axes = []
    for s, e, a, st in zip(starts_l, ends_l, axes_l, steps_l):
        a = norm_axis(a, x.dim())
        # slice.indices clamps exactly as ONNX Slice does, for both signs of the step.
        s0, e0, st0 = slice(s, e, st).indices(x.shape[a])
        if st0 > 0:
            index[a] = slice(s0, e0, st0)
        else:
            reversed_axes.append((a, s0, e0, st0))
    out = x[tuple(index)]
    for a, s0, e0, st0 in reversed_axes:
        out = out.index_select(a, torch.arange(s0, e0, st0, device=out.device))
    return out


@op("Slice", since=1)
def _lower_slice(n: NodeContext) -> Value:
    if n.opset < 10:
        axes = n.attr("axes")
        return n.call(
            _slice,
            n.input(0),
            tuple(n.attr("starts")),
            tuple(n.attr("ends")),
            None if axes is None else tuple(axes),
            None,
        )
    axes = n.ints(3) if n.has_input(3) else None
    steps = n.ints(4) if n.has_input(4) else None
    return n.call(_slice, n.input(0), n.ints(1), n.ints(2), axes, steps)


def _wrap_negative(idx: torch.Tensor, dim: int | torch.Tensor) -> torch.Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + dim, idx)


def _gather(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    x, idx = same_device(x, idx)
    axis = norm_axis(axis, x.dim())
    idx = _wrap_negative(idx, x.shape[axis])
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


@op("Gather", since=1)
def _lower_gather(n: NodeContext) -> Value:
    return n.call(_gather, n.input(0), n.input(1), int(n.attr("axis", 0)))


def _gather_elements(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    x, idx = same_device(x, idx)
    axis = norm_axis(axis, x.dim())
    return torch.gather(x, axis, _wrap_negative(idx, x.shape[axis]))


@op("GatherElements", since=11)
def _lower_gather_elements(n: NodeContext) -> Value:
    return n.call(_gather_elements, n.input(0), n.input(1), int(n.attr("axis", 0)))


def _gather_nd(x: torch.Tensor, idx: torch.Tensor, batch_dims: int) -> torch.Tensor:
    x, idx = same_device(x, idx)
    k = idx.shape[-1]
    batch = math.prod(x.shape[:batch_dims])
    xf = x.reshape((batch, *x.shape[batch_dims:]))
    idxf = idx.to(torch.int64).reshape(batch, -1, k)
    dims = torch.tensor(x.shape[batch_dims : batch_dims + k], device=idx.device, dtype=torch.int64)
    idxf = torch.where(idxf < 0, idxf + dims, idxf)
    bi = torch.arange(batch, device=idx.device).view(batch, 1).expand(batch, idxf.shape[1])
    out = xf[(bi, *idxf.unbind(-1))]
    return out.reshape(tuple(idx.shape[:-1]) + tuple(x.shape[batch_dims + k :]))


@op("GatherND", since=11)
def _lower_gather_nd(n: NodeContext) -> Value:
    return n.call(_gather_nd, n.input(0), n.input(1), int(n.attr("batch_dims", 0)))


_REDUCE_INDEX = {"mul": "prod", "max": "amax", "min": "amin"}


def _scatter_nd(x: torch.Tensor, idx: torch.Tensor, upd: torch.Tensor, reduction: str) -> torch.Tensor:
    x, idx, upd = same_device(x, idx, upd)
    out = x.clone()
    k = idx.shape[-1]
    dims = torch.tensor(x.shape[:k], device=idx.device, dtype=torch.int64)
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + dims, idx)
    if reduction in ("none", "add"):
        out.index_put_(tuple(idx.unbind(-1)), upd, accumulate=reduction == "add")
        return out
    strides = torch.tensor([math.prod(x.shape[j + 1 : k]) for j in range(k)], device=idx.device, dtype=torch.int64)
    lin = (idx * strides).sum(-1).reshape(-1)
    flat = out.reshape(math.prod(x.shape[:k]), -1)
    flat.index_reduce_(0, lin, upd.reshape(lin.numel(), -1), _REDUCE_INDEX[reduction], include_self=True)
    return flat.reshape(x.shape)


def _refuse_reduction(n: NodeContext) -> str | None:
    r = n.attr("reduction", "none")
    return None if r in ("none", "add", "mul", "max", "min") else f"unknown reduction {r!r}"


@op("ScatterND", since=11, refuse=_refuse_reduction)
def _lower_scatter_nd(n: NodeContext) -> Value:
    return n.call(_scatter_nd, n.input(0), n.input(1), n.input(2), n.attr("reduction", "none"))


_REDUCE_SCATTER = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter_elements(x: torch.Tensor, idx: torch.Tensor, upd: torch.Tensor, axis: int, reduction: str) -> torch.Tensor:
    x, idx, upd = same_device(x, idx, upd)
    axis = norm_axis(axis, x.dim())
    idx = _wrap_negative(idx, x.shape[axis])
    if reduction == "none":
        return x.scatter(axis, idx, upd)
    return x.scatter_reduce(axis, idx, upd, _REDUCE_SCATTER[reduction], include_self=True)


@op("ScatterElements", "Scatter", since=9, refuse=_refuse_reduction)
def _lower_scatter_elements(n: NodeContext) -> Value:
    return n.call(
        _scatter_elements, n.input(0), n.input(1), n.input(2), int(n.attr("axis", 0)), n.attr("reduction", "none")
    )


def _expand(x: torch.Tensor, shape: Ints) -> torch.Tensor:
    dims = as_ints(shape)
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(dims)))


@op("Expand", since=8)
def _lower_expand(n: NodeContext) -> Value:
    return n.call(_expand, n.input(0), n.ints(1))


def _tile(x: torch.Tensor, repeats: Ints) -> torch.Tensor:
    return x.repeat(as_ints(repeats))


@op("Tile", since=6)
def _lower_tile(n: NodeContext) -> Value:
    return n.call(_tile, n.input(0), n.ints(1))


def _pad_index(i: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    if mode == "edge":
        return i.clamp(0, dim - 1)
    if mode == "wrap":
        return torch.remainder(i, dim)
    period = 2 * (dim - 1)  # reflect
    if period == 0:
        return torch.zeros_like(i)
    j = torch.remainder(i, period)
    return torch.where(j >= dim, period - j, j)


def _pad(x: torch.Tensor, pads: Ints, value: torch.Tensor | float | None, axes: Ints | None, mode: str) -> torch.Tensor:
    pad_l = as_ints(pads)
    rank = x.dim()
    axes_l = [norm_axis(a, rank) for a in as_ints(axes)] if axes is not None else list(range(rank))
    count = len(axes_l)
    begin = dict(zip(axes_l, pad_l[:count]))
    end = dict(zip(axes_l, pad_l[count:]))
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1)[0].item() if value.numel() else 0
    if mode == "constant":
        torch_pads: list[int] = []
        for ax in reversed(range(rank)):
            torch_pads += [begin.get(ax, 0), end.get(ax, 0)]
        return F.pad(x, torch_pads, value=value or 0)
    for ax in axes_l:
        b, e = begin.get(ax, 0), end.get(ax, 0)
        if b == 0 and e == 0:
            continue
        dim = x.shape[ax]
        positions = torch.arange(-b, dim + e, device=x.device)
        x = x.index_select(ax, _pad_index(positions, dim, mode))
    return x


def _refuse_pad(n: NodeContext) -> str | None:
    mode = n.attr("mode", "constant")
    return None if mode in ("constant", "reflect", "edge", "wrap") else f"unknown Pad mode {mode!r}"


@op("Pad", since=2, refuse=_refuse_pad)
def _lower_pad(n: NodeContext) -> Value:
    mode = n.attr("mode", "constant")
    if n.opset < 11:
        return n.call(_pad, n.input(0), tuple(n.attr("pads")), float(n.attr("value", 0.0)), None, mode)
    value = n.scalar(2) if n.has_input(2) else 0
    axes = n.ints(3) if n.has_input(3) else None
    return n.call(_pad, n.input(0), n.ints(1), value, axes, mode)


def _constant_of_shape(shape: Ints, fill: float | int | bool, dtype: torch.dtype, anchor: torch.Tensor) -> torch.Tensor:
    return torch.full(as_ints(shape), fill, dtype=dtype, device=anchor.device)


@host_result
def _host_constant_of_shape(shape: Ints, fill: float | int | bool, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(as_ints(shape), fill, dtype=dtype)


@op("ConstantOfShape", since=9)
def _lower_constant_of_shape(n: NodeContext) -> Value:
    value = n.attr("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    if value.is_floating_point():
        value = value.to(target_dtype(n, 1))  # 1 == TensorProto.FLOAT: the configured float type
    # The fill is an attribute: read it now, so no run reads a device scalar back (a sync that breaks
    # CUDA-graph capture).
    fill = value.reshape(-1)[0].item()
    shape = n.ints(0)
    if isinstance(shape, tuple):
        return torch.full(shape, fill, dtype=value.dtype)
    if value.is_floating_point() or value.dtype == torch.bool:  # masks and fills: the model's device
        assert n.builder is not None
        return n.call(_constant_of_shape, shape, fill, value.dtype, n.builder.anchor())
    return n.call(_host_constant_of_shape, shape, fill, value.dtype)  # integer fills are shape arithmetic


def _range(
    start: torch.Tensor | float, limit: torch.Tensor | float, delta: torch.Tensor | float, like: torch.Tensor
) -> torch.Tensor:
    vals = [v.reshape(-1)[0].item() if isinstance(v, torch.Tensor) else v for v in (start, limit, delta)]
    s, lim, d = vals
    count = max(math.ceil((lim - s) / d), 0)
    if like.is_floating_point():
        return s + torch.arange(count, dtype=like.dtype) * d
    return torch.arange(s, s + count * d, d, dtype=like.dtype)[:count]


@op("Range", since=11)
def _lower_range(n: NodeContext) -> Value:
    like = n.input(0)
    return n.call(_range, n.scalar(0), n.scalar(1), n.scalar(2), like)


def _trilu(x: torch.Tensor, k: torch.Tensor | int, upper: bool) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        k = int(k.reshape(-1)[0].item())
    return torch.triu(x, k) if upper else torch.tril(x, k)


@op("Trilu", since=14)
def _lower_trilu(n: NodeContext) -> Value:
    k = n.scalar(1) if n.has_input(1) else 0
    return n.call(_trilu, n.input(0), k, bool(n.attr("upper", 1)))


def _cumsum(x: torch.Tensor, axis: torch.Tensor | int, exclusive: bool, reverse: bool) -> torch.Tensor:
    if isinstance(axis, torch.Tensor):
        axis = int(axis.reshape(-1)[0].item())
    ax = norm_axis(int(axis), x.dim())
    if reverse:
        x = x.flip(ax)
    y = torch.cumsum(x, ax).to(x.dtype)
    if exclusive:
        y = y - x
    return y.flip(ax) if reverse else y


@op("CumSum", since=11)
def _lower_cumsum(n: NodeContext) -> Value:
    return n.call(_cumsum, n.input(0), n.scalar(1), bool(n.attr("exclusive", 0)), bool(n.attr("reverse", 0)))


def _topk(x: torch.Tensor, k: torch.Tensor | int, axis: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(k, torch.Tensor):
        k = int(k.reshape(-1)[0].item())
    axis = norm_axis(axis, x.dim())
    # A stable sort keeps the lower index first among equal values, as ONNX requires.
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, int(k)), indices.narrow(axis, 0, int(k))


@op("TopK", since=1)
def _lower_topk(n: NodeContext) -> list[Value]:
    k = n.attr("k") if n.opset < 10 else n.scalar(1)
    return n.call_multi(_topk, 2, n.input(0), k, int(n.attr("axis", -1)), bool(n.attr("largest", 1)))


def _arg(x: torch.Tensor, axis: int, keepdims: bool, last: bool, is_max: bool) -> torch.Tensor:
    axis = norm_axis(axis, x.dim())
    fn = torch.argmax if is_max else torch.argmin
    if last:
        flipped = fn(x.flip(axis), dim=axis, keepdim=keepdims)
        return x.shape[axis] - 1 - flipped
    return fn(x, dim=axis, keepdim=keepdims)


@op("ArgMax", "ArgMin", since=1)
def _lower_arg(n: NodeContext) -> Value:
    return n.call(
        _arg,
        n.input(0),
        int(n.attr("axis", 0)),
        bool(n.attr("keepdims", 1)),
        bool(n.attr("select_last_index", 0)),
        n.op_type == "ArgMax",
    )


def _one_hot(idx: torch.Tensor, depth: torch.Tensor | float, values: torch.Tensor, axis: int) -> torch.Tensor:
    if isinstance(depth, torch.Tensor):
        depth = depth.reshape(-1)[0].item()
    d = int(depth)
    idx, values = same_device(idx, values)
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + d, idx)
    axis = norm_axis(axis, idx.dim() + 1)
    shape = [1] * (idx.dim() + 1)
    shape[axis] = d
    hot = idx.unsqueeze(axis) == torch.arange(d, device=idx.device).reshape(shape)
    return torch.where(hot, values[1], values[0])


@op("OneHot", since=9)
def _lower_one_hot(n: NodeContext) -> Value:
    return n.call(_one_hot, n.input(0), n.scalar(1), n.input(2), int(n.attr("axis", -1)))


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).T.contiguous()


@op("NonZero", since=9)
def _lower_nonzero(n: NodeContext) -> Value:
    return n.call(_nonzero, n.input(0))


def _depth_to_space(x: torch.Tensor, bs: int, crd: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    if crd:
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@op("DepthToSpace", since=1)
def _lower_depth_to_space(n: NodeContext) -> Value:
    return n.call(_depth_to_space, n.input(0), int(n.attr("blocksize")), n.attr("mode", "DCR") == "CRD")


def _space_to_depth(x: torch.Tensor, bs: int, crd: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    t = t.permute(0, 1, 3, 5, 2, 4) if crd else t.permute(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * bs * bs, h // bs, w // bs)


@op("SpaceToDepth", since=1)
def _lower_space_to_depth(n: NodeContext) -> Value:
    return n.call(_space_to_depth, n.input(0), int(n.attr("blocksize")), n.attr("mode", "DCR") == "CRD")


def _eye_like(x: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    h, w = x.shape
    rows = torch.arange(h, device=x.device).unsqueeze(1)
    cols = torch.arange(w, device=x.device).unsqueeze(0)
    return (rows + k == cols).to(dtype)


@op("EyeLike", since=9)
def _lower_eye_like(n: NodeContext) -> Value:
    x = n.input(0)
    dtype_attr = n.attr("dtype")
    assert n.builder is not None
    if dtype_attr is not None:
        dtype = target_dtype(n, int(dtype_attr))
        return n.call(_eye_like, x, int(n.attr("k", 0)), dtype)
    return n.call(_eye_like_same, x, int(n.attr("k", 0)))


def _eye_like_same(x: torch.Tensor, k: int) -> torch.Tensor:
    return _eye_like(x, k, x.dtype)


def _compress(x: torch.Tensor, cond: torch.Tensor, axis: int | None) -> torch.Tensor:
    x, cond = same_device(x, cond)
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = norm_axis(axis, x.dim())
    keep = torch.nonzero(cond.to(torch.bool).reshape(-1)[: x.shape[axis]]).reshape(-1)
    return x.index_select(axis, keep)


@op("Compress", since=9)
def _lower_compress(n: NodeContext) -> Value:
    axis = n.attr("axis")
    return n.call(_compress, n.input(0), n.input(1), None if axis is None else int(axis))


def _cumprod(x: torch.Tensor, axis: torch.Tensor | int, exclusive: bool, reverse: bool) -> torch.Tensor:
    if isinstance(axis, torch.Tensor):
        axis = int(axis.reshape(-1)[0].item())
    ax = norm_axis(int(axis), x.dim())
    if reverse:
        x = x.flip(ax)
    if exclusive:  # shift in a one rather than divide: exact with zeros
        ones = torch.ones_like(x.narrow(ax, 0, 1))
        x = torch.cat([ones, x.narrow(ax, 0, x.shape[ax] - 1)], dim=ax)
    y = torch.cumprod(x, ax).to(x.dtype)
    return y.flip(ax) if reverse else y


@op("CumProd", since=1)
def _lower_cumprod(n: NodeContext) -> Value:
    return n.call(_cumprod, n.input(0), n.scalar(1), bool(n.attr("exclusive", 0)), bool(n.attr("reverse", 0)))


def _reverse_sequence(x: torch.Tensor, lens: torch.Tensor, batch_axis: int, time_axis: int) -> torch.Tensor:
    x, lens = same_device(x, lens)
    moved = x.movedim((time_axis, batch_axis), (0, 1))  # [time, batch, ...]
    steps = torch.arange(moved.shape[0], device=x.device).unsqueeze(1)
    lens = lens.to(torch.int64).unsqueeze(0)
    idx = torch.where(steps < lens, lens - 1 - steps, steps)  # reverse the first lens[b] steps only
    idx = idx.reshape(idx.shape + (1,) * (moved.dim() - 2)).expand_as(moved)
    return torch.gather(moved, 0, idx).movedim((0, 1), (time_axis, batch_axis))


@op("ReverseSequence", since=10)
def _lower_reverse_sequence(n: NodeContext) -> Value:
    return n.call(_reverse_sequence, n.input(0), n.input(1), int(n.attr("batch_axis", 1)), int(n.attr("time_axis", 0)))


def _det(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.det(x)


@op("Det", since=11)
def _lower_det(n: NodeContext) -> Value:
    return n.call(_det, n.input(0))
