"""Sample inputs generated from a model's signature, for accuracy checks, calibration and profiling.

Integer inputs are the dangerous case: a random int64 fed to a Gather indexes out of its table and
the runtime fails (or, worse, reads garbage). The analysis below finds, for each integer input,
the smallest table it indexes (following Cast/Unsqueeze/Reshape-like ops) and draws below it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import ConfigError
from aivmm.models._spec import ModelSpec, TensorSpec

# Ops that carry an index through unchanged in value, so a bound found past them still applies.
_PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"})
# When no Gather bound is found, integers are drawn from [0, 2): valid ids for any table of two or
# more rows and valid values for masks and token-type ids.
DEFAULT_INT_HIGH = 2
# A symbolic dimension that is neither the batch nor recorded in ``shapes_used`` gets this size.
DEFAULT_DYNAMIC_DIM = 8


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """How one input is generated, and why (so an explanation can show it)."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    low: float
    high: float
    reason: str


def index_bounds(model_path: str | pathlib.Path) -> dict[str, int]:
    """For each graph input used as Gather indices into a constant table, the table's size on that axis."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    table_dims: dict[str, list[int]] = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    table_dims[node.output[0]] = list(attr.t.dims)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    bounds: dict[str, int] = {}
    for inp in graph.input:
        if inp.name in table_dims:  # an initializer listed as input (old exporters)
            continue
        frontier, seen, best = [inp.name], set(), None
        while frontier and len(seen) < 256:  # bounded walk: a few hops is all an index ever takes
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node, pos in consumers.get(tensor, []):
                if node.op_type in ("Gather", "GatherElements") and pos == 1 and node.input[0] in table_dims:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = table_dims[node.input[0]]
                    if dims:
                        size = dims[axis % len(dims)]
                        best = size if best is None else min(best, size)
                elif node.op_type in _PASS_THROUGH and pos == 0:
                    frontier.extend(node.output)
        if best is not None:
            bounds[inp.name] = int(best)
    return bounds


def _concrete_shape(spec: ModelSpec, tensor: TensorSpec, batch: int) -> tuple[int, ...]:
    used = spec.shapes_used.get(tensor.name)
    dims: list[int] = []
    for axis, dim in enumerate(tensor.shape):
        if isinstance(dim, int) and dim >= 0:  # a fixed size wins, even on the batch axis
            dims.append(dim)
        elif spec.batch_dim is not None and axis == spec.batch_dim:
            dims.append(batch)
        elif used is not None and axis < len(used):
            dims.append(int(used[axis]))
        else:
            dims.append(DEFAULT_DYNAMIC_DIM)
    return tuple(dims)


def input_plans(spec: ModelSpec, *, batch: int = 1) -> tuple[InputPlan, ...]:
    """How each input would be generated; raises ConfigError when one cannot be (strings)."""
    check_generatable(spec)
    bounds: dict[str, int] = {}
    if isinstance(spec.source, str | pathlib.Path) and str(spec.source).endswith(".onnx"):
        bounds = index_bounds(spec.source)
    plans = []
    for tensor in spec.inputs:
        shape = _concrete_shape(spec, tensor, batch)
        if tensor.dtype is DType.STRING:
            raise ConfigError(
                f"cannot generate a reference input for {tensor.describe()} (a string tensor): "
                "pass sample_inputs= to check accuracy"
            )
        if tensor.dtype is DType.BOOL:
            plans.append(InputPlan(tensor.name, shape, tensor.dtype, 0, 2, "booleans"))
        elif tensor.dtype.is_float:
            plans.append(InputPlan(tensor.name, shape, tensor.dtype, -1.0, 1.0, "uniform floats in [-1, 1)"))
        elif tensor.name in bounds:
            plans.append(InputPlan(tensor.name, shape, tensor.dtype, 0, bounds[tensor.name],
                                   f"indices below the Gather table size {bounds[tensor.name]}"))
        else:
            plans.append(InputPlan(tensor.name, shape, tensor.dtype, 0, DEFAULT_INT_HIGH,
                                   f"integers in [0, {DEFAULT_INT_HIGH}): no Gather table bounds this input"))
    return tuple(plans)


def check_generatable(spec: ModelSpec) -> None:
    """Raise ConfigError when some input cannot be generated (cheap: reads only the signature)."""
    for tensor in spec.inputs:
        if tensor.dtype in (DType.STRING, DType.BFLOAT16):
            raise ConfigError(
                f"cannot generate a reference input for {tensor.describe()} (a {tensor.dtype.value} tensor): "
                "pass sample_inputs= to check accuracy"
            )


def sample_inputs(spec: ModelSpec, *, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs matching ``spec``'s signature (see :func:`input_plans` for the ranges)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for p in input_plans(spec, batch=batch):
        if p.dtype is DType.BOOL:
            feeds[p.name] = rng.integers(0, 2, size=p.shape).astype(bool)
        elif p.dtype.is_float:
            if p.dtype is DType.BFLOAT16:
                raise ConfigError(f"cannot generate a bfloat16 reference input for {p.name!r}: pass sample_inputs=")
            feeds[p.name] = rng.uniform(p.low, p.high, size=p.shape).astype(p.dtype.to_numpy())
        else:
            feeds[p.name] = rng.integers(int(p.low), int(p.high), size=p.shape).astype(p.dtype.to_numpy())
    return feeds


def check_feeds(spec: ModelSpec, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """User-given sample inputs: every model input present, as numpy arrays."""
    if not isinstance(feeds, Mapping):
        if len(spec.inputs) == 1:
            feeds = {spec.inputs[0].name: feeds}
        else:
            raise ConfigError(f"sample_inputs must be a dict name -> array for {spec.signature()}")
    missing = [t.name for t in spec.inputs if t.name not in feeds]
    unknown = sorted(set(feeds) - {t.name for t in spec.inputs})
    if missing or unknown:
        raise ConfigError(
            f"sample_inputs do not match {spec.signature()}: missing {missing}, unknown {unknown}"
        )
    return {t.name: np.asarray(feeds[t.name]) for t in spec.inputs}
