"""DFT (opset 17 attribute axis, opset 20 input axis; real or complex input as a trailing dim of
1 or 2; onesided; inverse; dft_length) and the window generators."""

from __future__ import annotations

import math

import torch

from aivmm.backends.torch.lowering._elementwise import target_dtype
from aivmm.backends.torch.lowering._node import NodeContext, Value, norm_axis
from aivmm.backends.torch.lowering._registry import op


def _dft(
    x: torch.Tensor, length: torch.Tensor | int | None, axis: torch.Tensor | int, inverse: bool, onesided: bool
) -> torch.Tensor:
    if isinstance(length, torch.Tensor):
        length = int(length.reshape(-1)[0].item())
    if isinstance(axis, torch.Tensor):
        axis = int(axis.reshape(-1)[0].item())
    ax = norm_axis(int(axis), x.dim())
    # Half-precision FFTs are limited in torch (powers of two only): compute in float32 at least, and
    # in float64 on the CPU, where it costs little and matches the float64 reference.
    wide = torch.float64 if x.device.type == "cpu" else torch.float32
    work = x if x.dtype == torch.float64 else x.to(wide)
    if x.shape[-1] == 1:
        signal = work[..., 0].to(torch.complex128 if work.dtype == torch.float64 else torch.complex64)
    else:
        signal = torch.view_as_complex(work.contiguous())
    if inverse and onesided:  # a half spectrum back to a real signal
        n = int(length) if length is not None else 2 * (signal.shape[ax] - 1)
        return torch.fft.irfft(signal, n=n, dim=ax).unsqueeze(-1).to(x.dtype)
    n = int(length) if length is not None else signal.shape[ax]
    y = torch.fft.ifft(signal, n=n, dim=ax) if inverse else torch.fft.fft(signal, n=n, dim=ax)
    if onesided:
        y = y.narrow(ax, 0, n // 2 + 1)
    return torch.view_as_real(y).to(x.dtype)


@op("DFT", since=17)
def _lower_dft(n: NodeContext) -> Value:
    length = n.scalar(1) if n.has_input(1) else None
    # Opset 20 moved the axis from an attribute (default 1) to an input (default -2).
    axis = (n.scalar(2) if n.has_input(2) else -2) if n.opset >= 20 else int(n.attr("axis", 1))
    return n.call(_dft, n.input(0), length, axis, bool(n.attr("inverse", 0)), bool(n.attr("onesided", 0)))


def _window(size: torch.Tensor | int, kind: str, periodic: bool, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(size, torch.Tensor):
        size = int(size.reshape(-1)[0].item())
    count = int(size)
    denom = count if periodic else count - 1
    k = torch.arange(count, dtype=torch.float64)
    phase = 2 * math.pi * k / denom
    if kind == "HannWindow":
        w = 0.5 - 0.5 * torch.cos(phase)
    elif kind == "HammingWindow":
        alpha = 25.0 / 46.0
        w = alpha - (1 - alpha) * torch.cos(phase)
    else:
        w = 0.42 - 0.5 * torch.cos(phase) + 0.08 * torch.cos(2 * phase)
    return w.to(dtype)


@op("HannWindow", "HammingWindow", "BlackmanWindow", since=17)
def _lower_window(n: NodeContext) -> Value:
    dtype = target_dtype(n, int(n.attr("output_datatype", 1)))
    return n.call(_window, n.scalar(0), n.op_type, bool(n.attr("periodic", 1)), dtype)
