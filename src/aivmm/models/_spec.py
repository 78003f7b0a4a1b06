"""Model values: the signature and the analysis the planner consumes."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aivmm.dtypes import DType

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


class ModelFormat(enum.Enum):
    ONNX = "onnx"
    TORCH_MODULE = "torch-module"
    TORCH_EXPORTED = "torch-exported"


class Category(enum.Enum):
    TRANSFORMER = "transformer"
    CNN = "cnn"
    RNN = "rnn"
    RECOMMENDER = "recommender"
    SCIENTIFIC = "scientific"
    OTHER = "other"


class ValueKind(enum.Enum):
    """What a model input or output holds: a tensor, or one of ONNX's containers of tensors.

    For a container, :attr:`TensorSpec.dtype` and :attr:`TensorSpec.shape` describe its tensors.
    A caller passes a sequence as a list of arrays and an empty optional as ``None``.
    """

    TENSOR = "tensor"
    SEQUENCE = "sequence"  # a list of tensors, each of the element type and shape
    OPTIONAL = "optional"  # a tensor or None
    OPTIONAL_SEQUENCE = "optional-sequence"  # a list of tensors or None

    @property
    def is_sequence(self) -> bool:
        return self in (ValueKind.SEQUENCE, ValueKind.OPTIONAL_SEQUENCE)

    @property
    def is_optional(self) -> bool:
        return self in (ValueKind.OPTIONAL, ValueKind.OPTIONAL_SEQUENCE)


_KIND_TEXT = {
    ValueKind.SEQUENCE: "seq({})",
    ValueKind.OPTIONAL: "optional({})",
    ValueKind.OPTIONAL_SEQUENCE: "optional(seq({}))",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``kind`` says whether it is a tensor or a container of tensors;
    ``ranked`` is False when the model does not declare the (element) rank, as sequence outputs often
    do not: then ``shape`` is ``()`` and only the element type is checked."""

    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    kind: ValueKind = ValueKind.TENSOR
    ranked: bool = True

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    @property
    def is_tensor(self) -> bool:
        return self.kind is ValueKind.TENSOR

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape) if self.ranked else "..."
        text = f"{self.dtype.value}[{dims}]"
        return f"{self.name}: {_KIND_TEXT[self.kind].format(text) if self.kind in _KIND_TEXT else text}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype.value, "shape": list(self.shape)}
        if not self.is_tensor:  # tensors keep their established form
            out["kind"] = self.kind.value
        if not self.ranked:
            out["ranked"] = False
        return out


@dataclasses.dataclass(frozen=True)
class CategoryScore:
    category: Category
    confidence: float  # 0..1
    evidence: tuple[str, ...]
    # For transformers: "causal-decoder-llm", "encoder-llm", "encoder-decoder" or "" when not a language model.
    subtype: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category.value,
            "confidence": round(self.confidence, 3),
            "evidence": list(self.evidence),
        }
        if self.subtype:
            out["subtype"] = self.subtype
        return out


def _ro(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """Everything aivmm knows about a model, computed once at load.

    ``flops`` count multiply and add separately (2 per MAC) for the shapes in ``shapes_used``;
    ``per_operator_flops`` maps op type to its total. ``parameter_bytes`` counts initializers and
    large constants at their stored precision. ``source`` is the path of an ONNX file (or the
    in-memory object for torch models) and ``sha256`` the content hash that detects a file
    changed after deploy.
    """

    name: str
    format: ModelFormat
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: int = 0
    parameter_bytes: int = 0
    flops: int = 0
    macs: int = 0
    peak_activation_bytes: int = 0
    operators: Mapping[str, int] = dataclasses.field(default_factory=dict)
    per_operator_flops: Mapping[str, int] = dataclasses.field(default_factory=dict)
    opsets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    custom_domains: tuple[str, ...] = ()
    control_flow: tuple[str, ...] = ()
    quantized_operators: tuple[str, ...] = ()
    categories: tuple[CategoryScore, ...] = ()
    shapes_used: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    source: Any = None
    sha256: str = ""
    external_data: bool = False
    size_bytes: int = 0
    batch_dim: int | None = 0  # index of the batch dimension shared by all inputs, None when there is none
    warnings: tuple[str, ...] = ()
    # The loader's parse of the ONNX file, shared while the model is deployed (models._parsed).
    parsed: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for field in ("operators", "per_operator_flops", "opsets", "shapes_used"):
            object.__setattr__(self, field, _ro(getattr(self, field)))

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def primary_category(self) -> Category:
        if not self.categories:
            return Category.OTHER
        return max(self.categories, key=lambda c: c.confidence).category

    def has_category(self, category: Category) -> bool:
        return any(c.category is category for c in self.categories)

    def signature(self) -> str:
        ins = "; ".join(t.describe() for t in self.inputs)
        outs = "; ".join(t.describe() for t in self.outputs)
        return f"inputs ({ins}) -> outputs ({outs})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format.value,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "parameters": self.parameters,
            "parameter_bytes": self.parameter_bytes,
            "flops": self.flops,
            "macs": self.macs,
            "peak_activation_bytes": self.peak_activation_bytes,
            "operators": dict(self.operators),
            "per_operator_flops": dict(self.per_operator_flops),
            "opsets": dict(self.opsets),
            "custom_domains": list(self.custom_domains),
            "control_flow": list(self.control_flow),
            "quantized_operators": list(self.quantized_operators),
            "categories": [c.to_json() for c in self.categories],
            "shapes_used": {k: list(v) for k, v in self.shapes_used.items()},
            "sha256": self.sha256,
            "external_data": self.external_data,
            "size_bytes": self.size_bytes,
            "batch_dim": self.batch_dim,
            "warnings": list(self.warnings),
        }
