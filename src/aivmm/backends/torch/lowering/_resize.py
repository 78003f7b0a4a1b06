"""Resize (and the older Upsample), one axis at a time, following the ONNX formulas exactly.

Rather than matching each combination of mode and coordinate transformation to one of
``F.interpolate``'s (which agree with ONNX only for some), every output coordinate is mapped to
its source coordinate with the ONNX formula and the taps are gathered with ``index_select``:
nearest (four rounding modes), linear and cubic (any ``cubic_coeff_a``, ``exclude_outside``), all
coordinate transformation modes including ``tf_crop_and_resize``. Antialiasing is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from aivmm.backends.torch.lowering._node import Ints, NodeContext, Value, as_ints, same_device
from aivmm.backends.torch.lowering._registry import op

_MODES = ("nearest", "linear", "cubic")
_COORDS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coords(
    out_size: int, in_size: int, scale: float, mode: str, roi: tuple[float, float] | None, device: torch.device
) -> torch.Tensor:
    x = torch.arange(out_size, dtype=torch.float64, device=device)
    out_width = scale * in_size
    if mode == "align_corners":
        return x * 0 if out_width == 1 else x * (in_size - 1) / (out_width - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if out_width == 1:
            base = x * 0 + (end - start) * (in_size - 1) / 2
        else:
            base = x * (end - start) * (in_size - 1) / (out_width - 1)
        return base + start * (in_size - 1)
    if mode == "pytorch_half_pixel":
        return x * 0 - 0.5 if out_width == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_size / out_width
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5


def _cubic_weights(r: torch.Tensor, a: float) -> list[torch.Tensor]:
    s = 1 - r
    return [
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * s - (a + 3)) * s * s + 1,
        ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
    ]


def _resize_axis(x: torch.Tensor, axis: int, out_size: int, scale: float, p: dict) -> torch.Tensor:
    in_size = x.shape[axis]
    src = _source_coords(out_size, in_size, scale, p["coord"], p["roi"].get(axis), x.device)
    is_int = src == torch.floor(src)
    # The left neighbour: floor, except that an exact integer takes the pixel itself as the right one.
    i0 = torch.where(is_int, src - 1, torch.floor(src))
    ratio = src - i0
    last = in_size - 1
    if p["mode"] == "nearest":
        frac = src - torch.floor(src)
        rounding = p["nearest"]
        if rounding == "round_prefer_floor":
            pick = torch.floor(src) + (frac > 0.5)
        elif rounding == "round_prefer_ceil":
            pick = torch.floor(src) + (frac >= 0.5)
        elif rounding == "floor":
            pick = torch.floor(src)
        else:
            pick = torch.ceil(src)
        out = x.index_select(axis, pick.clamp(0, last).to(torch.int64))
    else:
        if p["mode"] == "linear":
            offsets = [0, 1]
            weights = [1 - ratio, ratio]
        else:
            offsets = [-1, 0, 1, 2]
            weights = _cubic_weights(ratio, p["cubic_a"])
        idx = [i0 + o for o in offsets]
        if p["exclude_outside"]:
            weights = [w * ((i >= 0) & (i <= last)) for w, i in zip(weights, idx)]
            total = sum(weights)
            weights = [w / total for w in weights]
        shape = [1] * x.dim()
        shape[axis] = out_size
        xf = x.to(torch.float64) if not x.is_floating_point() else x
        taps = [
            xf.index_select(axis, i.clamp(0, last).to(torch.int64)) * w.to(xf.dtype).reshape(shape)
            for w, i in zip(weights, idx)
        ]
        out = taps[0]
        for tap in taps[1:]:
            out = out + tap
    if p["coord"] == "tf_crop_and_resize":
        outside = ((src < 0) | (src > last)).reshape([out_size if d == axis else 1 for d in range(x.dim())])
        out = torch.where(outside, torch.tensor(p["extrapolation"], dtype=out.dtype, device=out.device), out)
    if not x.is_floating_point():
        out = torch.round(out).clamp(torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max).to(x.dtype)
    return out


def _resize(
    x: torch.Tensor,
    roi: torch.Tensor | Sequence[float] | None,
    scales: torch.Tensor | Sequence[float] | None,
    sizes: Ints | None,
    axes: list[int] | None,
    policy: str,
    p: dict,
) -> torch.Tensor:
    rank = x.dim()
    axes_l = [a + rank if a < 0 else a for a in axes] if axes else list(range(rank))
    scale_l = [float(s) for s in (scales.reshape(-1).tolist() if isinstance(scales, torch.Tensor) else scales or [])]
    size_l = as_ints(sizes) if sizes is not None else []
    roi_l = [float(v) for v in (roi.reshape(-1).tolist() if isinstance(roi, torch.Tensor) else roi or [])]
    n = len(axes_l)
    p = dict(p, roi={a: (roi_l[i], roi_l[n + i]) for i, a in enumerate(axes_l)} if len(roi_l) == 2 * n else {})
    in_sizes = [x.shape[a] for a in axes_l]
    if size_l:
        scale_l = [o / i for o, i in zip(size_l, in_sizes)]
        if policy != "stretch":
            s = min(scale_l) if policy == "not_larger" else max(scale_l)
            scale_l = [s] * n
            size_l = [int(s * i + 0.5) for i in in_sizes]
    else:
        size_l = [int(s * i) for s, i in zip(scale_l, in_sizes)]
    for a, out_size, scale in zip(axes_l, size_l, scale_l):
        identity = math.isclose(scale, 1.0) and out_size == x.shape[a] and a not in p["roi"]
        if not identity:
            x = _resize_axis(x, a, out_size, scale, p)
    return x


def _refuse_resize(n: NodeContext) -> str | None:
    mode = n.attr("mode", "nearest")
    if mode not in _MODES:
        return f"unknown mode {mode!r}"
    coord = n.attr("coordinate_transformation_mode", "half_pixel")
    if coord not in _COORDS:
        return f"unknown coordinate_transformation_mode {coord!r}"
    if n.attr("nearest_mode", "round_prefer_floor") not in _NEAREST:
        return f"unknown nearest_mode {n.attr('nearest_mode')!r}"
    if n.attr("antialias", 0):
        return "antialias=1 is not lowered (its filter footprint depends on the scale)"
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        return f"unknown keep_aspect_ratio_policy {policy!r}"
    return None


def _params(n: NodeContext, legacy: bool) -> dict:
    return {
        "mode": n.attr("mode", "nearest"),
        "coord": "asymmetric" if legacy else n.attr("coordinate_transformation_mode", "half_pixel"),
        "nearest": "floor" if legacy else n.attr("nearest_mode", "round_prefer_floor"),
        "cubic_a": float(n.attr("cubic_coeff_a", -0.75)),
        "exclude_outside": bool(n.attr("exclude_outside", 0)),
        "extrapolation": float(n.attr("extrapolation_value", 0.0)),
        "roi": {},
    }


def _vector(n: NodeContext, i: int) -> object:
    if not n.has_input(i):
        return None
    v = n.input(i)
    if isinstance(v, torch.Tensor):
        return None if v.numel() == 0 else tuple(v.reshape(-1).tolist())
    return v


@op("Resize", since=10, refuse=_refuse_resize)
def _lower_resize(n: NodeContext) -> Value:
    if n.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        return n.call(_resize, n.input(0), None, _vector(n, 1), None, None, "stretch", _params(n, True))
    axes = n.attr("axes")
    return n.call(
        _resize,
        n.input(0),
        _vector(n, 1),
        _vector(n, 2),
        _vector(n, 3),
        None if axes is None else [int(a) for a in axes],
        n.attr("keep_aspect_ratio_policy", "stretch"),
        _params(n, False),
    )


@op("Upsample", since=7, refuse=_refuse_resize)
def _lower_upsample(n: NodeContext) -> Value:
    scales = tuple(n.attr("scales")) if n.opset < 9 else _vector(n, 1)
    return n.call(_resize, n.input(0), None, scales, None, None, "stretch", _params(n, True))


_GRID_MODES = {
    "bilinear": "bilinear",
    "linear": "bilinear",
    "nearest": "nearest",
    "bicubic": "bicubic",
    "cubic": "bicubic",
}


def _refuse_grid_sample(n: NodeContext) -> str | None:
    mode = n.attr("mode", "bilinear" if n.opset < 20 else "linear")
    if mode not in _GRID_MODES:
        return f"unknown GridSample mode {mode!r}"
    padding = n.attr("padding_mode", "zeros")
    if padding not in ("zeros", "border", "reflection"):
        return f"unknown padding_mode {padding!r}"
    return None


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align: bool) -> torch.Tensor:
    if x.dim() not in (4, 5):
        raise ValueError(f"GridSample on a {x.dim()}-D input: torch samples 4-D and 5-D inputs")
    if x.dim() == 5 and mode == "bicubic":
        raise ValueError("cubic GridSample on a 5-D input: torch has no 3-D cubic sampling")
    x, grid = same_device(x, grid)
    # torch's grid_sample defines the same coordinates, modes and padding as ONNX GridSample.
    return torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding, align_corners=align)


@op("GridSample", since=16, refuse=_refuse_grid_sample)
def _lower_grid_sample(n: NodeContext) -> Value:
    mode = _GRID_MODES[n.attr("mode", "bilinear" if n.opset < 20 else "linear")]
    return n.call(
        _grid_sample, n.input(0), n.input(1), mode, n.attr("padding_mode", "zeros"), bool(n.attr("align_corners", 0))
    )
