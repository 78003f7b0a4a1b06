"""Convolutions, matrix products and normalisations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._node import NodeContext, Value, norm_axis, same_device
from aivmm.backends.torch.lowering._registry import op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def same_pads(sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], mode: str) -> list[int]:
    """Explicit pads (begins then ends) for auto_pad SAME_UPPER / SAME_LOWER."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if mode == "SAME_UPPER" else total - small)
        ends.append(total - small if mode == "SAME_UPPER" else small)
    return begins + ends


def resolve_pads(
    x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int] | None, dilations: list[int], auto_pad: str
) -> list[int]:
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * nd)
    return list(pads)


def torch_pads(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX begins/ends per axis as F.pad's list (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    strides: list[int] | None,
    pads: list[int] | None,
    dilations: list[int] | None,
    group: int,
    auto_pad: str,
) -> torch.Tensor:
    x, w, b = same_device(x, w, b)
    nd = x.dim() - 2
    kernel = list(w.shape[2:])
    strides = strides or [1] * nd
    dilations = dilations or [1] * nd
    p = resolve_pads(x, kernel, strides, pads, dilations, auto_pad)
    begins, ends = p[:nd], p[nd:]
    if begins != ends:
        x = F.pad(x, torch_pads(begins, ends))
        begins = [0] * nd
    return _CONV[nd](x, w, b, strides, begins, dilations, group)


def _refuse_conv(n: NodeContext) -> str | None:
    kernel = n.attr("kernel_shape")
    if kernel is not None and not 1 <= len(kernel) <= 3:
        return f"{len(kernel)}-D convolution: torch has 1-D, 2-D and 3-D"
    auto_pad = n.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"unknown auto_pad {auto_pad!r}"
    return None


def _ints_attr(n: NodeContext, name: str) -> list[int] | None:
    v = n.attr(name)
    return None if v is None else [int(i) for i in v]


@op("Conv", since=1, refuse=_refuse_conv)
def _lower_conv(n: NodeContext) -> Value:
    w = n.input(1)
    auto_pad = n.attr("auto_pad", "NOTSET")
    if isinstance(w, torch.Tensor) and auto_pad in ("NOTSET", "VALID") and 3 <= w.dim() <= 5:
        # Everything is known now: call torch's convolution directly, with no per-call padding logic.
        nd = w.dim() - 2
        pads = (_ints_attr(n, "pads") if auto_pad == "NOTSET" else None) or [0] * (2 * nd)
        if pads[:nd] == pads[nd:]:
            return n.call(
                _CONV[nd],
                n.input(0),
                w,
                n.input(2),
                _ints_attr(n, "strides") or [1] * nd,
                pads[:nd],
                _ints_attr(n, "dilations") or [1] * nd,
                int(n.attr("group", 1)),
            )
    return n.call(
        _conv,
        n.input(0),
        n.input(1),
        n.input(2),
        _ints_attr(n, "strides"),
        _ints_attr(n, "pads"),
        _ints_attr(n, "dilations"),
        int(n.attr("group", 1)),
        n.attr("auto_pad", "NOTSET"),
    )


def _conv_transpose(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    strides: list[int] | None,
    pads: list[int] | None,
    dilations: list[int] | None,
    group: int,
    auto_pad: str,
    output_padding: list[int] | None,
    output_shape: list[int] | None,
) -> torch.Tensor:
    x, w, b = same_device(x, w, b)
    nd = x.dim() - 2
    kernel = list(w.shape[2:])
    strides = strides or [1] * nd
    dilations = dilations or [1] * nd
    out_pad = output_padding or [0] * nd
    sizes = list(x.shape[2:])
    full = [s * (i - 1) + (k - 1) * d + 1 for s, i, k, d in zip(strides, sizes, kernel, dilations)]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(output_shape[-nd:]) if output_shape else [i * s for i, s in zip(sizes, strides)]
        totals = [f + op - o for f, op, o in zip(full, out_pad, wanted)]
        upper = auto_pad == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        ends = [t - t // 2 if upper else t // 2 for t in totals]
    elif auto_pad == "VALID" or not pads:
        begins, ends = [0] * nd, [0] * nd
    else:
        begins, ends = list(pads[:nd]), list(pads[nd:])
    y = _CONV_T[nd](x, w, None, strides, 0, 0, group, dilations)
    # Crop the pads away (and add the output_padding rows, which only the bias reaches).
    for axis in range(nd):
        length = full[axis] - begins[axis] - ends[axis] + out_pad[axis]
        dim = axis + 2
        start = begins[axis]
        extra = start + length - y.shape[dim]
        if extra > 0:
            pad = [0, 0] * (y.dim() - dim - 1) + [0, extra]
            y = F.pad(y, pad)
        if start < 0:
            y = F.pad(y, [0, 0] * (y.dim() - dim - 1) + [-start, 0])
            start = 0
        y = y.narrow(dim, start, length)
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return y


@op("ConvTranspose", since=1, refuse=_refuse_conv)
def _lower_conv_transpose(n: NodeContext) -> Value:
    return n.call(
        _conv_transpose,
        n.input(0),
        n.input(1),
        n.input(2),
        _ints_attr(n, "strides"),
        _ints_attr(n, "pads"),
        _ints_attr(n, "dilations"),
        int(n.attr("group", 1)),
        n.attr("auto_pad", "NOTSET"),
        _ints_attr(n, "output_padding"),
        _ints_attr(n, "output_shape"),
    )


def _gemm(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, trans_a: bool, trans_b: bool
) -> torch.Tensor:
    a, b, c = same_device(a, b, c)
    if trans_a:
        a = a.t()
    if trans_b:
        b = b.t()
    if c is None or beta == 0:
        y = a @ b
        return y if alpha == 1 else y * alpha
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


@op("Gemm", since=7)
def _lower_gemm(n: NodeContext) -> Value:
    return n.call(
        _gemm,
        n.input(0),
        n.input(1),
        n.input(2),
        float(n.attr("alpha", 1.0)),
        float(n.attr("beta", 1.0)),
        bool(n.attr("transA", 0)),
        bool(n.attr("transB", 0)),
    )


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = same_device(a, b)
    return torch.matmul(a, b)


@op("MatMul", since=1)
def _lower_matmul(n: NodeContext) -> Value:
    return n.call(_matmul, n.input(0), n.input(1))


def _einsum(equation: str, *xs: torch.Tensor) -> torch.Tensor:
    if equation == "->" and len(xs) == 1:  # torch.einsum rejects a scalar with empty subscripts
        return xs[0].clone()
    return torch.einsum(equation, *same_device(*xs))


@op("Einsum", since=12)
def _lower_einsum(n: NodeContext) -> Value:
    return n.call(_einsum, n.attr("equation").replace(" ", ""), *n.inputs())


def _refuse_batch_norm(n: NodeContext) -> str | None:
    if n.attr("training_mode", 0):
        return "training_mode=1 BatchNormalization is not lowered (inference only)"
    if n.opset < 9 and n.attr("spatial", 1) == 0:
        return "spatial=0 BatchNormalization is not lowered"
    if any(n.output_used(i) for i in range(1, n.n_outputs)):
        return "the running-statistics outputs of BatchNormalization exist only in training"
    return None


def _batch_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> torch.Tensor:
    x, scale, bias, mean, var = same_device(x, scale, bias, mean, var)
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@op("BatchNormalization", since=7, refuse=_refuse_batch_norm)
def _lower_batch_norm(n: NodeContext) -> Value:
    return n.call(
        _batch_norm, n.input(0), n.input(1), n.input(2), n.input(3), n.input(4), float(n.attr("epsilon", 1e-5))
    )


def _layer_norm(
    x: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, axis: int, eps: float, stats: bool
) -> tuple[torch.Tensor, ...]:
    x, scale, bias = same_device(x, scale, bias)
    axis = norm_axis(axis, x.dim())
    shape = tuple(x.shape[axis:])
    fits = all(t is None or tuple(t.shape) == shape for t in (scale, bias))
    if not stats and fits:
        return (F.layer_norm(x, shape, scale, bias, eps),)
    dims = tuple(range(axis, x.dim()))
    xf = x.float()  # stash_type: statistics in float32
    mean = xf.mean(dims, keepdim=True)
    inv = torch.rsqrt(((xf - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = ((xf - mean) * inv).to(x.dtype)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


@op("LayerNormalization", since=17)
def _lower_layer_norm(n: NodeContext) -> list[Value]:
    stats = n.output_used(1) or n.output_used(2)
    scale, bias = n.input(1), n.input(2)
    if (
        not stats
        and int(n.attr("axis", -1)) == -1
        and isinstance(scale, torch.Tensor)
        and scale.dim() == 1
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == scale.shape))
    ):
        # The usual case (last axis, constant affine): torch's kernel directly, no per-call checks.
        return [n.call(F.layer_norm, n.input(0), tuple(scale.shape), scale, bias, float(n.attr("epsilon", 1e-5)))]
    return n.call_multi(
        _layer_norm,
        3 if stats else 1,
        n.input(0),
        n.input(1),
        n.input(2),
        int(n.attr("axis", -1)),
        float(n.attr("epsilon", 1e-5)),
        stats,
    )


def _rms_norm(x: torch.Tensor, scale: torch.Tensor, axis: int, eps: float) -> torch.Tensor:
    x, scale = same_device(x, scale)
    axis = norm_axis(axis, x.dim())
    xf = x.float()
    dims = tuple(range(axis, x.dim()))
    y = (xf * torch.rsqrt((xf * xf).mean(dims, keepdim=True) + eps)).to(x.dtype)
    return y * scale


@op("RMSNormalization", since=23)
def _lower_rms_norm(n: NodeContext) -> Value:
    return n.call(_rms_norm, n.input(0), n.input(1), int(n.attr("axis", -1)), float(n.attr("epsilon", 1e-5)))


def _instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    x, scale, bias = same_device(x, scale, bias)
    return F.instance_norm(x, None, None, scale, bias, True, 0.0, eps)


@op("InstanceNormalization", since=6)
def _lower_instance_norm(n: NodeContext) -> Value:
    return n.call(_instance_norm, n.input(0), n.input(1), n.input(2), float(n.attr("epsilon", 1e-5)))


def _group_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, groups: int, eps: float, per_channel: bool
) -> torch.Tensor:
    x, scale, bias = same_device(x, scale, bias)
    if not per_channel:  # opset 18: one scale and bias per group
        repeat = x.shape[1] // groups
        scale, bias = scale.repeat_interleave(repeat), bias.repeat_interleave(repeat)
    return F.group_norm(x, groups, scale, bias, eps)


@op("GroupNormalization", since=18)
def _lower_group_norm(n: NodeContext) -> Value:
    return n.call(
        _group_norm,
        n.input(0),
        n.input(1),
        n.input(2),
        int(n.attr("num_groups")),
        float(n.attr("epsilon", 1e-5)),
        n.opset >= 21,
    )


def _lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    sq = (x * x).unsqueeze(1)
    front, back = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(sq, [0, 0] * (x.dim() - 2) + [front, back])
    window = sq.unfold(2, size, 1).sum(-1).squeeze(1)
    return x / (bias + alpha / size * window) ** beta


@op("LRN", since=1)
def _lower_lrn(n: NodeContext) -> Value:
    return n.call(
        _lrn,
        n.input(0),
        int(n.attr("size")),
        float(n.attr("alpha", 1e-4)),
        float(n.attr("beta", 0.75)),
        float(n.attr("bias", 1.0)),
    )


def _lp_norm(x: torch.Tensor, axis: int, p: int) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, p, dim=axis, keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)  # a zero vector stays zero


@op("LpNormalization", since=1)
def _lower_lp_norm(n: NodeContext) -> Value:
    return n.call(_lp_norm, n.input(0), int(n.attr("axis", -1)), int(n.attr("p", 2)))


def _mvn(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    mean = x.mean(axes, keepdim=True)
    var = (x * x).mean(axes, keepdim=True) - mean * mean
    return (x - mean) / (torch.sqrt(var) + 1e-9)


@op("MeanVarianceNormalization", since=9)
def _lower_mvn(n: NodeContext) -> Value:
    return n.call(_mvn, n.input(0), [int(a) for a in n.attr("axes", [0, 2, 3])])
