"""ONNX element types: the translation to :class:`~aivmm.dtypes.DType` and storage sizes.

Kept apart because only this module and the loader speak ONNX's integer type codes.
"""

from __future__ import annotations

from aivmm.dtypes import DType
from aivmm.errors import UnsupportedModelError

# TensorProto.DataType codes (stable across onnx releases: they are part of the file format).
_TO_DTYPE: dict[int, DType] = {
    1: DType.FLOAT32,
    2: DType.UINT8,
    3: DType.INT8,
    4: DType.UINT16,
    5: DType.INT16,
    6: DType.INT32,
    7: DType.INT64,
    8: DType.STRING,
    9: DType.BOOL,
    10: DType.FLOAT16,
    11: DType.FLOAT64,
    12: DType.UINT32,
    13: DType.UINT64,
    16: DType.BFLOAT16,
}
_FROM_DTYPE = {v: k for k, v in _TO_DTYPE.items()}

# Bytes per element, including the types DType does not model (complex, float8, 4-bit):
# the analysis must size every intermediate tensor, not only model inputs and outputs.
# 4-bit and 2-bit types are packed, hence fractions.
_ITEMSIZE: dict[int, float] = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    8: 0,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    14: 8,
    15: 16,
    16: 2,
    17: 1,
    18: 1,
    19: 1,
    20: 1,
    21: 0.5,
    22: 0.5,
    23: 0.5,
    24: 1,
    25: 0.25,
    26: 0.25,
}


def to_dtype(elem_type: int, what: str) -> DType:
    """The DType of an ONNX element type; ``what`` names the tensor for the error message."""
    try:
        return _TO_DTYPE[elem_type]
    except KeyError:
        raise UnsupportedModelError(
            f"{what}: element type {type_name(elem_type)} is not supported for model inputs and outputs"
        ) from None


def from_dtype(dtype: DType) -> int:
    return _FROM_DTYPE[dtype]


def itemsize(elem_type: int) -> float:
    return _ITEMSIZE.get(elem_type, 0)


def type_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.TensorProto.DataType.Name(elem_type))
    except ValueError:
        return f"<unknown element type {elem_type}>"
