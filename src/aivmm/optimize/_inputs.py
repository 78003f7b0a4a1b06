"""Sample inputs generated from a model's signature, for accuracy checks, calibration and profiling.

Generated inputs must be ones the model accepts, or every candidate fails on them. Shapes come
from :mod:`aivmm.optimize._dims` (expressions, metadata, one free size per anonymous unknown);
values from what the graph does with each input:

- integers used as Gather indices are drawn below the table size (following Cast/Reshape-like
  ops): a random int64 fed to a Gather indexes out of its table and the runtime fails;
- an input the graph compares with a constant (``Equal(sr, 16000)`` before an ``If``) gets that
  constant, so the branch taken is the one real inputs take;
- a boolean that is an ``If`` condition is ``True`` (probing tries ``False`` when that fails);
- masks are all ones (no padding), position ids count up from the past length;
- floats are uniform in [-1, 1).

:mod:`aivmm.optimize._probe` then runs the fp32 reference on them and adjusts the free sizes
when the model refuses them (stride divisibility, minimum lengths).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import ConfigError
from aivmm.models import ModelSpec, TensorSpec
from aivmm.optimize import _dims

# Ops that carry an index through unchanged in value, so a bound found past them still applies.
_PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"})
_COMPARE = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"})
# When no Gather bound is found, integers are drawn from [0, 2): valid ids for any table of two or
# more rows and valid values for masks and token-type ids.
DEFAULT_INT_HIGH = 2
# Kept for callers of the earlier module: the size of an unknown that is no batch, sequence or image side.
DEFAULT_DYNAMIC_DIM = _dims.DEFAULT_FREE
SEQUENCE_LENGTH = 2  # tensors in a generated sequence input: more than one, so a loop over it iterates
_MAX_WALK = 256  # tensors visited per input: a few hops is all an index or a flag ever takes


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """How one input is generated, and why (so an explanation can show it).

    ``fill`` is a constant every element takes (a compared-with value, a mask's 1, a flag);
    ``arange`` counts 0, 1, 2... along the last axis, from ``low`` (position ids).
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    low: float
    high: float
    reason: str
    fill: float | None = None
    arange: bool = False
    count: int | None = None  # a sequence input: how many tensors of ``shape`` it holds (None: a tensor)


@dataclasses.dataclass(frozen=True)
class GraphFacts:
    """What the graph does with its inputs, read once per file."""

    bounds: Mapping[str, int]  # input -> smallest Gather table it indexes
    compared: Mapping[str, float]  # input -> the constant it is compared with
    conditions: frozenset[str]  # boolean inputs that are If conditions
    metadata: Mapping[str, Any]  # imgsz (h, w) and stride from metadata_props


_NO_FACTS = GraphFacts({}, {}, frozenset(), {})


def _constants(graph: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for init in graph.initializer:
        out[init.name] = init
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    out[node.output[0]] = attr.t
    return out


def _scalar(t: Any) -> float | None:
    from onnx import numpy_helper

    dims = list(t.dims)
    if (dims and int(np.prod(dims)) != 1) or t.data_location == 1:
        return None
    try:
        return float(numpy_helper.to_array(t).reshape(-1)[0])
    except (ValueError, TypeError, IndexError):
        return None


def _metadata(model: Any) -> dict[str, Any]:
    """Ultralytics writes ``imgsz: '[320, 320]'`` and ``stride: '32'``; others write nothing usable."""
    props = {p.key: p.value for p in model.metadata_props}
    out: dict[str, Any] = {}
    raw = props.get("imgsz")
    if raw:
        nums = [int(n) for n in re.findall(r"\d+", raw)]
        if len(nums) == 1:
            out["imgsz"] = (nums[0], nums[0])
        elif len(nums) >= 2:
            out["imgsz"] = (nums[0], nums[1])
    raw = props.get("stride")
    if raw:
        nums = [int(n) for n in re.findall(r"\d+", raw)]
        if nums and max(nums) > 0:
            out["stride"] = max(nums)
    return out


def _facts_uncached(path: str, model: Any = None) -> GraphFacts:
    """The facts of the graph in ``path`` (``model``: its proto, already parsed)."""
    if model is None:
        import onnx

        model = onnx.load(path, load_external_data=False)
    graph = model.graph
    consts = _constants(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    bounds: dict[str, int] = {}
    compared: dict[str, float] = {}
    conditions: set[str] = set()
    for inp in graph.input:
        if inp.name in consts:  # an initializer listed as input (old exporters)
            continue
        frontier, best = [inp.name], None
        seen: set[str] = set()
        while frontier and len(seen) < _MAX_WALK:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node, pos in consumers.get(tensor, []):
                if node.op_type in ("Gather", "GatherElements") and pos == 1 and node.input[0] in consts:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = list(consts[node.input[0]].dims)
                    if dims:
                        size = dims[axis % len(dims)]
                        best = size if best is None else min(best, size)
                elif node.op_type in _COMPARE and len(node.input) == 2:
                    other = node.input[1 - pos]
                    value = _scalar(consts[other]) if other in consts else None
                    if value is not None and inp.name not in compared:
                        compared[inp.name] = value
                elif node.op_type == "If" and pos == 0:
                    conditions.add(inp.name)
                elif (node.op_type in _PASS_THROUGH or node.op_type == "Not") and pos == 0:
                    frontier.extend(node.output)
        if best is not None:
            bounds[inp.name] = int(best)
    vocab = _vocabulary(pathlib.Path(path))
    if vocab:
        for inp in graph.input:
            if "input_ids" in inp.name and inp.name not in bounds:
                bounds[inp.name] = vocab
    return GraphFacts(bounds, compared, frozenset(conditions), _metadata(model))


def _vocabulary(path: pathlib.Path) -> int | None:
    """``vocab_size`` of the transformers config.json an exporter (Optimum) writes beside the model:
    a bound for token ids when no Gather table in the graph gives one (a custom embedding op)."""
    config = path.parent / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    size = data.get("vocab_size") if isinstance(data, dict) else None
    return int(size) if isinstance(size, int) and size > 1 else None


_FACTS_KEPT = 32
_facts_lock = threading.Lock()
_facts: dict[tuple[str, int, int], GraphFacts] = {}


def graph_facts(spec: ModelSpec) -> GraphFacts:
    """The facts of ``spec``'s ONNX file (cached per file version, read from the loader's parse);
    none for other formats."""
    src = spec.source
    if not (isinstance(src, str | pathlib.Path) and str(src).endswith(".onnx") and os.path.isfile(src)):
        return _NO_FACTS
    st = os.stat(src)
    key = (str(src), st.st_mtime_ns, st.st_size)
    with _facts_lock:
        found = _facts.get(key)
    if found is None:
        from aivmm.models import onnx_model

        found = _facts_uncached(str(src), onnx_model(spec))
        with _facts_lock:
            if len(_facts) >= _FACTS_KEPT:
                _facts.clear()
            _facts[key] = found
    return found


def index_bounds(model_path: str | pathlib.Path) -> dict[str, int]:
    """For each graph input used as Gather indices into a constant table, the table's size on that axis."""
    return dict(_facts_uncached(str(model_path)).bounds)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The sizes chosen for every free dimension, and the boolean flags flipped by probing."""

    sizes: Mapping[_dims.Key, int]
    roles: Mapping[_dims.Key, _dims.Role]
    exprs: Mapping[str, _dims.Expression]
    flipped: frozenset[str] = frozenset()

    def with_sizes(self, changes: Mapping[_dims.Key, int]) -> Assignment:
        return dataclasses.replace(self, sizes={**self.sizes, **changes})

    def describe(self) -> str:
        parts = [f"{k}={v} ({self.roles[k].why})" for k, v in self.sizes.items() if k in self.roles]
        return ", ".join(parts)


def assign(spec: ModelSpec, *, batch: int = 1, facts: GraphFacts | None = None) -> Assignment:
    """The first guess for every free dimension (see :mod:`aivmm.optimize._dims`)."""
    facts = graph_facts(spec) if facts is None else facts
    roles, exprs = _dims.roles(spec, batch, facts.metadata)
    return Assignment({k: r.size for k, r in roles.items()}, roles, exprs)


def _plan_one(t: TensorSpec, shape: tuple[int, ...], facts: GraphFacts, a: Assignment) -> InputPlan:
    low_name = t.name.lower()
    if t.dtype is DType.BOOL:
        if t.name in facts.conditions:
            value = t.name not in a.flipped
            return InputPlan(t.name, shape, t.dtype, 0, 2, f"an If condition, set to {value}", fill=float(value))
        return InputPlan(t.name, shape, t.dtype, 0, 2, "booleans")
    if t.name in facts.compared:
        v = facts.compared[t.name]
        return InputPlan(t.name, shape, t.dtype, v, v, f"{v:g}, the constant the model compares it with", fill=v)
    if t.dtype.is_float:
        return InputPlan(t.name, shape, t.dtype, -1.0, 1.0, "uniform floats in [-1, 1)")
    if "mask" in low_name:
        return InputPlan(t.name, shape, t.dtype, 1, 1, "a mask of ones (no padding)", fill=1.0)
    if "position" in low_name and shape:
        past = next((s for k, s in a.sizes.items() if isinstance(k, str) and _dims._hinted(k, _dims._PAST_HINTS)), 0)
        return InputPlan(
            t.name, shape, t.dtype, past, past + shape[-1], f"positions counting up from {past}", arange=True
        )
    if t.name in facts.bounds:
        return InputPlan(
            t.name,
            shape,
            t.dtype,
            0,
            facts.bounds[t.name],
            f"indices below the Gather table size {facts.bounds[t.name]}",
        )
    return InputPlan(
        t.name,
        shape,
        t.dtype,
        0,
        DEFAULT_INT_HIGH,
        f"integers in [0, {DEFAULT_INT_HIGH}): no Gather table bounds this input",
    )


def input_plans(spec: ModelSpec, *, batch: int = 1, assignment: Assignment | None = None) -> tuple[InputPlan, ...]:
    """How each input would be generated; raises ConfigError when one cannot be (strings)."""
    check_generatable(spec)
    facts = graph_facts(spec)
    a = assignment if assignment is not None else assign(spec, batch=batch, facts=facts)
    if assignment is not None and batch != 1:
        a = a.with_sizes({k: batch for k, r in a.roles.items() if r.why == "the batch size"})
    plans = []
    for tensor in spec.inputs:
        shape = _dims.shape_of(tensor, a.sizes, a.exprs)
        one = _plan_one(tensor, shape, facts, a)
        if tensor.kind.is_sequence:  # an optional input is generated present, as a tensor or a sequence
            one = dataclasses.replace(one, count=SEQUENCE_LENGTH, reason=f"{SEQUENCE_LENGTH} tensors of {one.reason}")
        plans.append(one)
    return tuple(plans)


def check_generatable(spec: ModelSpec) -> None:
    """Raise ConfigError when some input cannot be generated (cheap: reads only the signature)."""
    for tensor in spec.inputs:
        if tensor.dtype in (DType.STRING, DType.BFLOAT16):
            raise ConfigError(
                f"cannot generate a reference input for {tensor.describe()} (a {tensor.dtype.value} tensor): "
                "pass sample_inputs= to check accuracy"
            )


def sample_inputs(
    spec: ModelSpec, *, batch: int = 1, seed: int = 0, assignment: Assignment | None = None
) -> dict[str, np.ndarray]:
    """Deterministic inputs matching ``spec``'s signature (see :func:`input_plans` for the ranges)."""
    return feeds_for(input_plans(spec, batch=batch, assignment=assignment), seed=seed)


def feeds_for(plans: tuple[InputPlan, ...], *, seed: int = 0) -> dict[str, Any]:
    """Arrays for the plans (a list of arrays for a sequence input), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for p in plans:
        feeds[p.name] = _array(p, rng) if p.count is None else [_array(p, rng) for _ in range(p.count)]
    return feeds


def _array(p: InputPlan, rng: np.random.Generator) -> np.ndarray:
    np_dtype = p.dtype.to_numpy()
    if p.fill is not None:
        return np.full(p.shape, p.fill).astype(np_dtype)
    if p.arange:
        row = np.arange(int(p.low), int(p.low) + (p.shape[-1] if p.shape else 1))
        return np.ascontiguousarray(np.broadcast_to(row, p.shape)).astype(np_dtype)
    if p.dtype is DType.BOOL:
        return rng.integers(0, 2, size=p.shape).astype(bool)
    if p.dtype.is_float:
        return rng.uniform(p.low, p.high, size=p.shape).astype(np_dtype)
    return rng.integers(int(p.low), max(int(p.high), int(p.low) + 1), size=p.shape).astype(np_dtype)


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
        raise ConfigError(f"sample_inputs do not match {spec.signature()}: missing {missing}, unknown {unknown}")
    return {t.name: _host_value(t, feeds[t.name]) for t in spec.inputs}


def _host_value(t: TensorSpec, value: Any) -> Any:
    """A numpy array; for a sequence input a list of them, for an empty optional one None."""
    if value is None and t.kind.is_optional:
        return None
    if t.kind.is_sequence and isinstance(value, (list, tuple)):
        return [np.asarray(item) for item in value]
    return np.asarray(value)
