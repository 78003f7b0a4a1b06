"""A candidate whose first GPU run faults on the device (an out-of-range gather index: a device-side
assert) is rejected from a worker process, and this process's CUDA context keeps working
(run there: ``pytest -m gpu tests/gpu/test_isolation_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aivmm.devices._types import Device, DeviceKind, Vendor  # noqa: E402
from aivmm.errors import InfeasibleError  # noqa: E402
from aivmm.models import load  # noqa: E402
from aivmm.planner import plan  # noqa: E402

pytestmark = pytest.mark.gpu


def test_device_side_assert_is_caught_in_a_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "gather.onnx"))
    free, total = torch.cuda.mem_get_info(0)
    gpu = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, torch.cuda.get_device_name(0), total, free, index=0)
    bad = {"ids": np.array([[1, 2, 1000]], dtype=np.int64)}
    try:
        p = plan(load(str(tmp_path / "gather.onnx")), [gpu], backends=["torch"], sample_inputs=bad, top_k=3)
        reasons = [str(r) for c in p.rejected for r in c.rejections]
    except InfeasibleError as exc:  # every candidate rejected
        reasons = [str(exc)]
    isolated = [r for r in reasons if "isolated worker process" in r]
    print(isolated[:2])
    assert isolated, reasons
    assert torch.ones(4, device="cuda").sum().item() == 4.0  # the context here is fine
