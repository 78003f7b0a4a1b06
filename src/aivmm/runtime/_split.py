"""Pipeline splits: a model too large for any one device cut into stages by parameter memory.

Nodes are walked in the ONNX graph's topological order and each initializer is charged to the
first node that reads it; a stage ends where its cumulative parameter bytes would pass its device's
room. The tensors crossing each cut are the stage's outputs and the next stages' inputs; each stage
is extracted with ``onnx.utils.Extractor`` into its own file and loaded as an ordinary session on
its device. ``SplitPlan.transfer_seconds`` gives the planner the cost of the cuts: bytes crossing
them over the link bandwidth.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivmm.backends import Config, Session
from aivmm.devices import Device
from aivmm.dtypes import DType
from aivmm.errors import BackendUnavailableError, ConfigError, ModelTooLargeError, missing_extra
from aivmm.memory import Transfer, transfer_for
from aivmm.models import ModelFormat, ModelSpec, TensorSpec


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    device: str
    first_node: int
    end_node: int  # exclusive
    parameter_bytes: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    model: str
    stages: tuple[Stage, ...]
    cut_bytes_per_item: tuple[int, ...]  # bytes crossing each cut for one batch item (-1: unknown shape)

    def transfer_seconds(self, batch: int = 1, link_bytes_per_s: float = 16e9) -> float:
        """Time spent moving intermediate tensors between stages for one batch."""
        if link_bytes_per_s <= 0:
            raise ConfigError(f"link bandwidth must be positive, got {link_bytes_per_s}")
        return sum(max(0, b) for b in self.cut_bytes_per_item) * batch / link_bytes_per_s

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "stages": [s.to_json() for s in self.stages],
            "cut_bytes_per_item": list(self.cut_bytes_per_item),
        }


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise missing_extra("onnx", "onnx") from exc
    return onnx


def _tensor_bytes(onnx: Any, init: Any) -> int:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    return int(np.prod(init.dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_split(spec: ModelSpec, rooms: Sequence[tuple[str, int]]) -> SplitPlan:
    """Cut ``spec`` into consecutive stages, stage k fitting in ``rooms[k]`` bytes of parameters.

    Raises ModelTooLargeError with the sizes when the devices together cannot hold it.
    """
    onnx = _onnx()
    if spec.format is not ModelFormat.ONNX or not isinstance(spec.source, str | pathlib.Path):
        raise ConfigError(f"only ONNX models given as a file can be split; {spec.name!r} is {spec.format.value}")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(spec.source)))
    graph = model.graph
    init_bytes = {i.name: _tensor_bytes(onnx, i) for i in graph.initializer}
    charged: set[str] = set()
    node_bytes: list[int] = []
    for node in graph.node:
        b = 0
        for name in node.input:
            if name in init_bytes and name not in charged:
                charged.add(name)
                b += init_bytes[name]
        node_bytes.append(b)
    total = sum(node_bytes)
    if total > sum(room for _, room in rooms):
        raise ModelTooLargeError(
            f"{spec.name!r} has {total} bytes of parameters; the devices together have room for"
            f" {sum(r for _, r in rooms)} ({', '.join(f'{d}: {r}' for d, r in rooms)})"
        )
    bounds: list[tuple[int, int, int]] = []  # (first, end, bytes)
    start, acc, k = 0, 0, 0
    for i, b in enumerate(node_bytes):
        if acc + b > rooms[k][1] and i > start:
            bounds.append((start, i, acc))
            start, acc, k = i, 0, k + 1
            if k >= len(rooms):
                raise ModelTooLargeError(f"{spec.name!r} does not split into {len(rooms)} stages that fit")
        if b > rooms[k][1]:
            raise ModelTooLargeError(
                f"{spec.name!r}: node {graph.node[i].name or i} alone holds {b} bytes of parameters, more than"
                f" the {rooms[k][1]} bytes of room on {rooms[k][0]}"
            )
        acc += b
    bounds.append((start, len(graph.node), acc))
    if len(bounds) < 2 and len(graph.node) > 1:
        # Fits on the first device after all; split in two anyway only when asked by a caller that
        # knows why (split=True). Halve by parameter bytes.
        half, acc2, cut = total / 2, 0, 1
        for i, b in enumerate(node_bytes):
            acc2 += b
            if acc2 >= half:
                cut = min(max(1, i + 1), len(graph.node) - 1)
                break
        bounds = [(0, cut, sum(node_bytes[:cut])), (cut, len(graph.node), sum(node_bytes[cut:]))]

    graph_inputs = {i.name for i in graph.input} - set(init_bytes)
    graph_outputs = [o.name for o in graph.output]
    produced_by: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            produced_by[out] = idx
    types = {v.name: v.type for v in (*graph.value_info, *graph.input, *graph.output)}
    stages: list[Stage] = []
    cut_bytes: list[int] = []
    for s, (first, end, pbytes) in enumerate(bounds):
        consumed: list[str] = []
        for node in graph.node[first:end]:
            for name in node.input:
                if (
                    name
                    and name not in init_bytes
                    and name not in consumed
                    and not (first <= produced_by.get(name, -1) < end)
                ):
                    consumed.append(name)
        later_needs = {n for node in graph.node[end:] for n in node.input}
        outs = [
            out
            for node in graph.node[first:end]
            for out in node.output
            if out and (out in later_needs or out in graph_outputs)
        ]
        inputs = tuple(n for n in consumed if n in graph_inputs or n in produced_by)
        stages.append(Stage(s, rooms[min(s, len(rooms) - 1)][0], first, end, pbytes, inputs, tuple(outs)))
        if s < len(bounds) - 1:
            cut_bytes.append(
                sum(_item_bytes(onnx, types.get(n), spec.batch_dim) for n in outs if n not in graph_outputs)
            )
    return SplitPlan(spec.name, tuple(stages), tuple(cut_bytes))


def _item_bytes(onnx: Any, type_proto: Any, batch_dim: int | None) -> int:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return -1
    tt = type_proto.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if batch_dim is not None and batch_dim < len(dims):
        dims[batch_dim] = 1
    known = [d for d in dims if d is not None]
    if len(known) < len(dims):
        return -1
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    return int(np.prod(known, dtype=np.int64)) * itemsize


def _tensor_spec(onnx: Any, value_info: Any) -> TensorSpec:
    tt = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return TensorSpec(value_info.name, DType.from_numpy(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), shape)


def build_stages(spec: ModelSpec, plan: SplitPlan, out_dir: pathlib.Path) -> list[ModelSpec]:
    """Write each stage as an ONNX file and describe it as a ModelSpec a backend can load."""
    onnx = _onnx()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(spec.source)))
    extractor = onnx.utils.Extractor(model)
    specs: list[ModelSpec] = []
    n_stages = len(plan.stages)
    for stage in plan.stages:
        sub = extractor.extract_model(list(stage.inputs), list(stage.outputs))
        path = out_dir / f"{spec.name.replace('/', '_')}.stage{stage.index}.onnx"
        onnx.save(sub, str(path))
        share = stage.parameter_bytes / max(1, spec.parameter_bytes)
        specs.append(
            ModelSpec(
                name=f"{spec.name}/stage{stage.index}",
                format=ModelFormat.ONNX,
                inputs=tuple(_tensor_spec(onnx, v) for v in sub.graph.input if v.name in stage.inputs),
                outputs=tuple(_tensor_spec(onnx, v) for v in sub.graph.output),
                parameters=int(spec.parameters * share),
                parameter_bytes=stage.parameter_bytes,
                peak_activation_bytes=spec.peak_activation_bytes // n_stages + 1,
                opsets=dict(spec.opsets),
                shapes_used=dict(spec.shapes_used),
                source=str(path),
                size_bytes=path.stat().st_size,
                batch_dim=spec.batch_dim,
            )
        )
    return specs


class PipelineSession(Session):
    """Runs stage sessions in order, moving the tensors that cross each cut between devices.

    Each stage's outputs come back to the host (numpy); each stage's tensor inputs go to it through
    the transfer layer of its device (``transfers[i]``, from :func:`aivmm.memory.transfer_for`):
    a view on a CPU, a pinned copy to a GPU's memory. Where a device has no transfer layer here (a
    vendor without one, or torch not seeing the GPU) that stage is handed host arrays and copies
    them itself, as a stage session always can; ``report.notes`` says so.
    """

    def __init__(self, model: ModelSpec, device: Device, config: Config, stages: Sequence[Session]) -> None:
        super().__init__(model, device, config)
        self.stages = list(stages)
        self.transfers: list[Transfer | None] = []
        notes = []
        for i, stage in enumerate(self.stages):
            notes.append(f"stage {i}: {stage.config.label()}")
            try:
                self.transfers.append(transfer_for(stage.device))
            except BackendUnavailableError as exc:
                self.transfers.append(None)
                notes.append(f"stage {i}: handed host arrays ({exc})")
        self.report = dataclasses.replace(
            self.report,
            device_memory_bytes=sum(s.report.device_memory_bytes for s in stages),
            notes=tuple(notes),
        )

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        env: dict[str, Any] = dict(feeds)
        for stage, transfer in zip(self.stages, self.transfers):
            given = {t.name: env[t.name] for t in stage.inputs}
            if transfer is not None:
                given = {
                    t.name: transfer.to_device(given[t.name]) if t.is_tensor else given[t.name] for t in stage.inputs
                }
            env.update(stage.run(given, output="numpy"))
        return {t.name: env[t.name] for t in self.model.outputs}

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.stages)

    def _close(self) -> None:
        for stage in self.stages:
            stage.close()
