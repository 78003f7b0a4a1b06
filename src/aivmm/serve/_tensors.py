"""Tensors on the wire: KServe v2 JSON data, Triton's binary tensor layout, and numpy.

Pure functions, no transport: HTTP and gRPC codecs both use them. Every malformed input raises
:class:`~aivmm.errors.InputError` (or its protocol subclasses) with a message naming the tensor
and what was wrong; nothing else escapes (the hypothesis tests hold this).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import ConfigError, InputError
from aivmm.serve._errors import PayloadTooLargeError, ProtocolError

# A bound on elements per tensor: stops a small JSON header from asking for an absurd allocation.
MAX_ELEMENTS = 1 << 31
_LEN = struct.Struct("<I")


def parse_datatype(name: object, tensor: str) -> DType:
    if not isinstance(name, str):
        raise InputError(f"tensor {tensor!r}: 'datatype' must be a string such as \"FP32\", got {name!r}")
    try:
        return DType.from_kserve(name)
    except ConfigError as exc:
        raise InputError(f"tensor {tensor!r}: {exc}") from None


def parse_shape(shape: object, tensor: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f"tensor {tensor!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise PayloadTooLargeError(
            f"tensor {tensor!r}: shape {list(shape)} has {count} elements (limit {MAX_ELEMENTS})"
        )
    return tuple(shape)


def datatype_of(array: np.ndarray) -> DType:
    try:
        return DType.from_numpy(array.dtype)
    except ConfigError as exc:
        raise InputError(str(exc)) from None


# -- binary layout --------------------------------------------------------------------------------
def from_bytes(buf: bytes | bytearray | memoryview, dtype: DType, shape: tuple[int, ...], tensor: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes; zero-copy for fixed-size types."""
    count = math.prod(shape)
    if dtype is DType.STRING:
        items = unpack_bytes(buf, tensor)
        if len(items) != count:
            raise InputError(f"tensor {tensor!r}: {len(items)} BYTES elements for shape {list(shape)} ({count})")
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    want = count * dtype.itemsize
    if len(buf) != want:
        raise InputError(
            f"tensor {tensor!r}: {len(buf)} bytes of {dtype.kserve} data for shape {list(shape)} "
            f"(expected {count} x {dtype.itemsize} = {want} bytes)"
        )
    arr = np.frombuffer(buf, dtype=dtype.to_numpy().newbyteorder("<"))
    if dtype is DType.BOOL and count and arr.view(np.uint8).max() > 1:
        raise InputError(f"tensor {tensor!r}: BOOL bytes must be 0 or 1")
    return arr.reshape(shape)


def unpack_bytes(buf: bytes | bytearray | memoryview, tensor: str) -> list[bytes]:
    """Triton's BYTES layout: each element a 4-byte little-endian length, then that many bytes."""
    view = memoryview(buf)
    items: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 4:
            raise InputError(f"tensor {tensor!r}: BYTES data ends inside a 4-byte length prefix")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if n > end - pos:
            raise InputError(f"tensor {tensor!r}: BYTES element of {n} bytes overruns the data ({end - pos} left)")
        items.append(bytes(view[pos : pos + n]))
        pos += n
    return items


def to_bytes(array: np.ndarray) -> bytes | memoryview:
    """The raw bytes of a tensor (a view, without a copy, when it is already little-endian C order)."""
    if array.dtype.kind in ("O", "U", "S"):
        return pack_bytes(array.ravel())
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.data.cast("B") if arr.size else b""


def pack_bytes(items: Iterable[Any]) -> bytes:
    parts: list[bytes] = []
    for item in items:
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


# -- JSON layout ----------------------------------------------------------------------------------
_KINDS_FOR = {
    "f": ("f", "i", "u"),  # integers are valid floating-point data
    "i": ("i", "u"),
    "u": ("i", "u"),
    "b": ("b",),
}


def from_json(data: object, dtype: DType, shape: tuple[int, ...], tensor: str) -> np.ndarray:
    """A tensor from KServe JSON ``data`` (flat or nested, row-major). Type-checked: no silent casts."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]  # a scalar is a one-element flat list
    if dtype is DType.STRING:
        flat = _flatten(data, tensor)
        if len(flat) != count:
            raise InputError(f"tensor {tensor!r}: {len(flat)} BYTES elements for shape {list(shape)} ({count})")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise InputError(f"tensor {tensor!r}: BYTES data must be strings, element {i} is {type(v).__name__}")
            out[i] = v.encode()
        return out.reshape(shape)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"tensor {tensor!r}: data is not a regular array of numbers ({exc})") from None
    if arr.size != count:
        raise InputError(f"tensor {tensor!r}: {arr.size} data elements for shape {list(shape)} ({count} expected)")
    np_type: np.dtype = np.dtype(np.float32) if dtype is DType.BFLOAT16 else dtype.to_numpy()
    if count and arr.dtype.kind not in _KINDS_FOR[np_type.kind]:
        raise InputError(
            f"tensor {tensor!r}: {dtype.kserve} data must be "
            f"{'booleans' if np_type.kind == 'b' else 'integers' if np_type.kind in 'iu' else 'numbers'}, "
            f"got {_describe_kind(arr)}"
        )
    if count and np_type.kind in "iu":
        info = np.iinfo(np_type)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise InputError(f"tensor {tensor!r}: values [{lo}, {hi}] do not fit {dtype.kserve}")
    out = arr.astype(np_type, copy=False).reshape(shape)
    return float32_to_bf16_bits(out) if dtype is DType.BFLOAT16 else out


def _describe_kind(arr: np.ndarray) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floating-point numbers",
        "U": "strings",
        "S": "strings",
    }.get(arr.dtype.kind, "mixed or non-numeric values")


def _flatten(data: list[Any], tensor: str, depth: int = 0) -> list[Any]:
    if depth > 32:
        raise InputError(f"tensor {tensor!r}: data nested more than 32 levels")
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v, tensor, depth + 1))
        else:
            out.append(v)
    return out


def to_json(array: np.ndarray) -> list[Any]:
    """Flat row-major JSON data for a tensor."""
    if array.dtype.kind in ("O", "U", "S"):
        out = []
        for v in array.ravel():
            if isinstance(v, bytes | np.bytes_):
                try:
                    out.append(v.decode())
                except UnicodeDecodeError:
                    raise InputError(
                        "an output holds bytes that are not UTF-8 text: ask for it with binary_data=true"
                    ) from None
            else:
                out.append(str(v))
        return out
    return array.ravel().tolist()


def float32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (as uint16) of float32 values, rounding to nearest even."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def shape_list(shape: Sequence[int]) -> list[int]:
    return [int(d) for d in shape]


__all__ = [
    "MAX_ELEMENTS",
    "ProtocolError",
    "datatype_of",
    "from_bytes",
    "from_json",
    "pack_bytes",
    "parse_datatype",
    "parse_shape",
    "to_bytes",
    "to_json",
    "unpack_bytes",
]
