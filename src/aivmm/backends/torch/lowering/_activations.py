"""Activations: Relu family, Gelu (both approximations), Softmax family (both axis semantics), Clip."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._node import NodeContext, Value, norm_axis, same_device
from aivmm.backends.torch.lowering._registry import op

_SIMPLE = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
}


@op(*_SIMPLE, since=6)
def _lower_simple(n: NodeContext) -> Value:
    return n.call(_SIMPLE[n.op_type], n.input(0))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # torch.nn.functional.softplus switches to x above a threshold; ONNX is log(exp(x) + 1) everywhere.
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


@op("Softplus", since=1)
def _lower_softplus(n: NodeContext) -> Value:
    return n.call(_softplus, n.input(0))


@op("LeakyRelu", since=6)
def _lower_leaky(n: NodeContext) -> Value:
    return n.call(F.leaky_relu, n.input(0), float(n.attr("alpha", 0.01)))


def _refuse_gelu(n: NodeContext) -> str | None:
    approx = n.attr("approximate", "none")
    return None if approx in ("none", "tanh") else f"unknown Gelu approximation {approx!r}"


@op("Gelu", since=20, refuse=_refuse_gelu)
def _lower_gelu(n: NodeContext) -> Value:
    return n.call(F.gelu, n.input(0), approximate=n.attr("approximate", "none"))


@op("Elu", since=6)
def _lower_elu(n: NodeContext) -> Value:
    return n.call(F.elu, n.input(0), float(n.attr("alpha", 1.0)))


def _celu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.clamp(x, min=0) + torch.clamp(alpha * (torch.exp(x / alpha) - 1), max=0)


@op("Celu", since=12)
def _lower_celu(n: NodeContext) -> Value:
    return n.call(_celu, n.input(0), float(n.attr("alpha", 1.0)))


def _selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * torch.exp(x) - alpha)


@op("Selu", since=6)
def _lower_selu(n: NodeContext) -> Value:
    return n.call(
        _selu,
        n.input(0),
        float(n.attr("alpha", 1.67326319217681884765625)),
        float(n.attr("gamma", 1.05070102214813232421875)),
    )


def _hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@op("HardSigmoid", since=6)
def _lower_hard_sigmoid(n: NodeContext) -> Value:
    return n.call(_hard_sigmoid, n.input(0), float(n.attr("alpha", 0.2)), float(n.attr("beta", 0.5)))


def _thresholded_relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


@op("ThresholdedRelu", since=10)
def _lower_thresholded(n: NodeContext) -> Value:
    return n.call(_thresholded_relu, n.input(0), float(n.attr("alpha", 1.0)))


def _swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@op("Swish", since=24)
def _lower_swish(n: NodeContext) -> Value:
    return n.call(_swish, n.input(0), float(n.attr("alpha", 1.0)))


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    x, slope = same_device(x, slope)
    return torch.where(x < 0, x * slope, x)


@op("PRelu", since=7)
def _lower_prelu(n: NodeContext) -> Value:
    return n.call(_prelu, n.input(0), n.input(1))


def _clip(x: torch.Tensor, lo: torch.Tensor | float | None, hi: torch.Tensor | float | None) -> torch.Tensor:
    if isinstance(lo, torch.Tensor):
        lo = same_device(x, lo)[1]
    if isinstance(hi, torch.Tensor):
        hi = same_device(x, hi)[1]
    if lo is None and hi is None:
        return x
    # torch.clamp takes a number or a tensor for each bound; its stubs want both bounds alike.
    return torch.clamp(x, lo, hi)  # type: ignore[arg-type]


@op("Clip", since=6)
def _lower_clip(n: NodeContext) -> Value:
    if n.opset < 11:
        return n.call(_clip, n.input(0), float(n.attr("min", -math.inf)), float(n.attr("max", math.inf)))
    lo = n.scalar(1) if n.has_input(1) else None
    hi = n.scalar(2) if n.has_input(2) else None
    return n.call(_clip, n.input(0), lo, hi)


def _softmax_family(fn_name: str, x: torch.Tensor, axis: int, legacy: bool) -> torch.Tensor:
    rank = x.dim()
    axis = norm_axis(axis, rank) if rank else 0
    if legacy and rank > 0:
        # Before opset 13 the input is flattened to 2-D at ``axis`` and normalised over the second dim.
        shape = x.shape
        x2 = x.reshape(math.prod(shape[:axis]), -1)
        return _softmax_family(fn_name, x2, 1, False).reshape(shape)
    if fn_name == "Softmax":
        return torch.softmax(x, axis)
    if fn_name == "LogSoftmax":
        return torch.log_softmax(x, axis)
    if x.shape[axis] == 0:
        return x.clone()
    idx = torch.argmax(x, dim=axis, keepdim=True)  # first maximum on ties, as ONNX asks
    return torch.zeros_like(x).scatter_(axis, idx, 1)


@op("Softmax", "LogSoftmax", "Hardmax", since=1)
def _lower_softmax(n: NodeContext) -> Value:
    legacy = n.opset < 13
    axis = int(n.attr("axis", 1 if legacy else -1))
    return n.call(_softmax_family, n.op_type, n.input(0), axis, legacy)
