"""``aivmm devices --check``: run a tiny computation (a 2-input Add ONNX model) on a device through
every runtime that claims it, and say whether it worked and, if not, the error."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aivmm.devices._types import Device


class CheckStatus(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    device_id: str
    runtime: str  # "" when skipped for want of a runtime
    status: CheckStatus
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "status": self.status.value, "detail": self.detail}


_SHAPE = (2, 3)


def _add_model(directory: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(_SHAPE)) for n in ("a", "b")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(_SHAPE))
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "aivmm_check_add", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every runtime version aivmm supports
    onnx.checker.check_model(model)
    path = directory / "aivmm_check_add.onnx"
    onnx.save(model, path)
    return path


def _tensors() -> tuple[Any, Any]:
    from aivmm.dtypes import DType
    from aivmm.models import TensorSpec

    ins = (TensorSpec("a", DType.FLOAT32, _SHAPE), TensorSpec("b", DType.FLOAT32, _SHAPE))
    return ins, (TensorSpec("y", DType.FLOAT32, _SHAPE),)


def _onnx_spec(path: Path) -> Any:
    from aivmm.models import ModelFormat, ModelSpec

    data = path.read_bytes()
    inputs, outputs = _tensors()
    return ModelSpec(
        name="aivmm-check-add",
        format=ModelFormat.ONNX,
        inputs=inputs,
        outputs=outputs,
        operators={"Add": 1},
        opsets={"": 13},
        source=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        flops=int(np.prod(_SHAPE)),
    )


def _torch_spec() -> Any:
    """The same Add as an nn.Module, for runtimes that take one when onnx is not installed (the
    GPU machine has torch and onnxruntime but not onnx)."""
    import torch

    from aivmm.models import ModelFormat, ModelSpec

    class Add(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    inputs, outputs = _tensors()
    return ModelSpec(
        name="aivmm-check-add",
        format=ModelFormat.TORCH_MODULE,
        inputs=inputs,
        outputs=outputs,
        operators={"add": 1},
        source=Add(),
        flops=int(np.prod(_SHAPE)),
    )


def check_device(device: Device) -> tuple[CheckResult, ...]:
    """One result per runtime in ``device.runtimes`` (or one "skipped: no runtime")."""
    if not device.runtimes:
        return (CheckResult(device.id, "", CheckStatus.SKIPPED, "no runtime"),)
    try:
        tmp = tempfile.TemporaryDirectory(prefix="aivmm-check-")
    except OSError as exc:
        why = f"no temporary directory: {exc}"
        return tuple(CheckResult(device.id, r, CheckStatus.FAIL, why) for r in device.runtimes)
    with tmp as directory:
        try:
            onnx_spec = _onnx_spec(_add_model(Path(directory)))
        except ImportError:
            onnx_spec = None
        return tuple(_check_one(device, runtime, onnx_spec) for runtime in device.runtimes)


def _spec_for(backend: Any, onnx_spec: Any) -> tuple[Any, str]:
    from aivmm.models import ModelFormat

    formats = backend.info().formats
    if onnx_spec is not None and ModelFormat.ONNX in formats:
        return onnx_spec, "ONNX Add"
    if ModelFormat.TORCH_MODULE in formats:
        try:
            return _torch_spec(), "torch-module Add"
        except ImportError:
            pass
    return None, ""


def _check_one(device: Device, runtime: str, onnx_spec: Any) -> CheckResult:
    from aivmm.backends import Config, registry

    rng = np.random.default_rng(0)
    a = rng.standard_normal(_SHAPE).astype(np.float32)
    b = rng.standard_normal(_SHAPE).astype(np.float32)
    session = None
    try:
        backend = registry.get(runtime)
        spec, label = _spec_for(backend, onnx_spec)
        if spec is None:
            return CheckResult(
                device.id, runtime, CheckStatus.SKIPPED, 'onnx is not installed (pip install "aivmm[onnx]")'
            )
        session = backend.load(spec, device, Config(backend=runtime, device=device.id))
        outputs = session.run({"a": a, "b": b})
        y = np.asarray(outputs["y"] if "y" in outputs else next(iter(outputs.values())))
        if y.shape != _SHAPE or not np.allclose(y, a + b, rtol=1e-3, atol=1e-3):
            return CheckResult(device.id, runtime, CheckStatus.FAIL, f"wrong result: got {y!r}, expected {a + b!r}")
        return CheckResult(device.id, runtime, CheckStatus.PASS, f"{label} matched numpy")
    except Exception as exc:  # the check exists to report failures, whatever raised them
        return CheckResult(device.id, runtime, CheckStatus.FAIL, f"{type(exc).__name__}: {exc}")
    finally:
        if session is not None:
            with contextlib.suppress(Exception):  # a failing close does not change whether the run passed
                session.close()
