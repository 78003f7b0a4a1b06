"""Feeds in, outputs out: numpy, torch and DLPack tensors, moved to the device at most once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aivmm.dtypes import DType
from aivmm.errors import InputError
from aivmm.models import TensorSpec

_TO_TORCH = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT64: torch.float64,
    DType.INT8: torch.int8,
    DType.INT16: torch.int16,
    DType.INT32: torch.int32,
    DType.INT64: torch.int64,
    DType.UINT8: torch.uint8,
    DType.UINT16: torch.uint16,
    DType.UINT32: torch.uint32,
    DType.UINT64: torch.uint64,
    DType.BOOL: torch.bool,
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def torch_dtype(dtype: DType) -> torch.dtype:
    try:
        return _TO_TORCH[dtype]
    except KeyError:
        raise InputError(f"element type {dtype.value} has no torch equivalent") from None


def to_tensor(
    value: Any, spec: TensorSpec, device: torch.device, float_dtype: torch.dtype, channels_last: bool = False
) -> torch.Tensor:
    """One feed as a tensor on ``device`` (no copy when it is already there in the right type)."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        if spec.dtype is DType.BFLOAT16 and arr.dtype == np.uint16:
            t = torch.from_numpy(np.ascontiguousarray(arr)).view(torch.bfloat16)
        elif arr.dtype.name == "bfloat16":  # ml_dtypes
            t = torch.from_numpy(np.ascontiguousarray(arr).view(np.uint16)).view(torch.bfloat16)
        else:
            if any(s < 0 for s in arr.strides):
                arr = np.ascontiguousarray(arr)
            t = torch.from_numpy(arr) if arr.ndim else torch.from_numpy(arr.reshape(()).copy())
    elif hasattr(value, "__dlpack__"):
        t = torch.from_dlpack(value)  # cupy, jax, ... : shares the memory
    elif isinstance(value, list | tuple | int | float | bool):
        t = torch.as_tensor(np.asarray(value, dtype=spec.dtype.to_numpy()))
    else:
        raise InputError(
            f"input {spec.name!r}: cannot use a {type(value).__name__} as a tensor; "
            "pass a numpy array, a torch tensor or a DLPack-capable array"
        )
    _check_shape(t, spec)
    want = float_dtype if t.dtype in FLOAT_DTYPES and spec.dtype.is_float else torch_dtype(spec.dtype)
    if channels_last and t.dim() == 4:
        return t.to(device=device, dtype=want, memory_format=torch.channels_last)
    if t.device != device:
        # One transfer, pinned-free; the dtype change happens on the device where it is cheaper.
        t = t.to(device, non_blocking=False)
    return t if t.dtype == want else t.to(want)


def _check_shape(t: torch.Tensor, spec: TensorSpec) -> None:
    if spec.shape and t.dim() != len(spec.shape):
        raise InputError(f"input {spec.name!r}: rank {t.dim()} (shape {tuple(t.shape)}), expected {spec.describe()}")
    for axis, (got, want) in enumerate(zip(t.shape, spec.shape)):
        if isinstance(want, int) and want >= 0 and got != want:
            raise InputError(f"input {spec.name!r}: dimension {axis} is {got}, expected {want} ({spec.describe()})")


def to_output(t: Any, spec: TensorSpec | None, output: str) -> Any:
    """A result as numpy (in the spec's dtype) or as the device tensor itself."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if output != "numpy":
        return t
    if spec is not None and spec.dtype in _TO_TORCH and spec.dtype is not DType.BFLOAT16:
        want = _TO_TORCH[spec.dtype]
        if t.dtype != want and t.dtype in FLOAT_DTYPES and want in FLOAT_DTYPES:
            t = t.to(want)
    t = t.detach()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hand back the bits as uint16
        return (
            t.cpu().view(torch.uint16).numpy()
            if spec is not None and spec.dtype is DType.BFLOAT16
            else t.float().cpu().numpy()
        )
    return t.cpu().numpy()
