"""How many device bytes a model needs: weights at its precision plus the activation peak."""

from __future__ import annotations

import dataclasses
import math

from aivmm.dtypes import Precision
from aivmm.models import ModelSpec


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages a person reads."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@dataclasses.dataclass(frozen=True)
class Footprint:
    weights_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.weights_bytes + self.activation_bytes

    def to_json(self) -> dict[str, int]:
        return {"weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes, "total": self.total}


def analysed_batch(spec: ModelSpec) -> int:
    """The batch size the spec's activation figures were computed at (1 when unknown)."""
    if spec.batch_dim is None:
        return 1
    for tensor in spec.inputs:
        shape = spec.shapes_used.get(tensor.name)
        if shape is not None and len(shape) > spec.batch_dim and shape[spec.batch_dim] > 0:
            return int(shape[spec.batch_dim])
        if len(tensor.shape) > spec.batch_dim:
            dim = tensor.shape[spec.batch_dim]
            if isinstance(dim, int) and dim > 0:
                return dim
    return 1


def estimate(spec: ModelSpec, precision: Precision = Precision.FP32, batch: int = 1) -> Footprint:
    """Weights rescaled to ``precision`` when the model stores fp32 parameters, activations scaled
    linearly from the analysed batch to ``batch`` (activations grow with the batch, weights do not)."""
    if spec.parameters > 0 and spec.parameter_bytes >= 4 * spec.parameters * 0.9:
        weights = math.ceil(spec.parameters * precision.bytes_per_weight)
    else:  # already low precision or unknown count: trust the stored size
        weights = spec.parameter_bytes
    per_item = spec.peak_activation_bytes / max(1, analysed_batch(spec))
    activations = math.ceil(per_item * max(1, batch))
    return Footprint(weights, activations)
