"""Element types and precisions: identities shared by every layer.

``DType`` names a tensor's element type; ``Precision`` names the arithmetic a configuration
computes in (a planner choice). Translations to runtime-specific names (ONNX element types,
OpenVINO types, torch dtypes) live in the adapters; the only translations here are to numpy,
which is a core dependency, and to the KServe v2 datatype strings, which are a protocol, not a
vendor.
"""

from __future__ import annotations

import enum

import numpy as np

from aivmm.errors import ConfigError


class DType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT64 = "float64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    BOOL = "bool"
    STRING = "string"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64)

    def to_numpy(self) -> np.dtype:
        if self is DType.BFLOAT16:
            # numpy has no bfloat16; callers that need it carry the bits as uint16.
            return np.dtype(np.uint16)
        if self is DType.STRING:
            return np.dtype(object)
        return np.dtype(self.value)

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return cls.STRING
        if dt.name == "bfloat16":  # ml_dtypes
            return cls.BFLOAT16
        try:
            return cls(dt.name)
        except ValueError:
            raise ConfigError(f"unsupported numpy dtype {dt.name!r}") from None

    @property
    def kserve(self) -> str:
        """The KServe v2 / Open Inference Protocol datatype string."""
        return _KSERVE[self]

    @classmethod
    def from_kserve(cls, name: str) -> DType:
        try:
            return _FROM_KSERVE[name]
        except KeyError:
            raise ConfigError(f"unknown datatype {name!r}; expected one of {sorted(_FROM_KSERVE)}") from None


_ITEMSIZE = {
    DType.FLOAT32: 4,
    DType.FLOAT16: 2,
    DType.BFLOAT16: 2,
    DType.FLOAT64: 8,
    DType.INT8: 1,
    DType.INT16: 2,
    DType.INT32: 4,
    DType.INT64: 8,
    DType.UINT8: 1,
    DType.UINT16: 2,
    DType.UINT32: 4,
    DType.UINT64: 8,
    DType.BOOL: 1,
    DType.STRING: 0,
}
_KSERVE = {
    DType.FLOAT32: "FP32",
    DType.FLOAT16: "FP16",
    DType.BFLOAT16: "BF16",
    DType.FLOAT64: "FP64",
    DType.INT8: "INT8",
    DType.INT16: "INT16",
    DType.INT32: "INT32",
    DType.INT64: "INT64",
    DType.UINT8: "UINT8",
    DType.UINT16: "UINT16",
    DType.UINT32: "UINT32",
    DType.UINT64: "UINT64",
    DType.BOOL: "BOOL",
    DType.STRING: "BYTES",
}
_FROM_KSERVE = {v: k for k, v in _KSERVE.items()}


class Precision(enum.Enum):
    """The arithmetic precision a configuration computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    @property
    def bytes_per_weight(self) -> float:
        return {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0}[self.value]

    @classmethod
    def parse(cls, text: str | Precision) -> Precision:
        if isinstance(text, Precision):
            return text
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ConfigError(f"unknown precision {text!r}; expected one of {[p.value for p in cls]}") from None
