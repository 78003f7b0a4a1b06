"""The data plane on a real VMM with a simulated H100 next to the CPU: Triton's instance_group
places models vendor-neutrally, a bad pin is a clear error, reload swaps without a gap."""

from __future__ import annotations

import asyncio
import pathlib
import sys

import numpy as np
import pytest

from aivmm.errors import ConfigError, InputError, ModelNotFoundError, ModelNotReadyError
from aivmm.serve._dataplane import DataPlane
from aivmm.serve._messages import InferRequest
from aivmm.serve._repository import Repository

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "e2e"))
import _serve_models

EXAMPLES = pathlib.Path(__file__).parents[2] / "src" / "aivmm" / "devices" / "examples"


def _pbtxt(kind: str, gpus: str = "") -> str:
    return f"instance_group [ {{ count: 1 kind: {kind} {gpus} }} ]"


@pytest.fixture
def plane(tmp_path: pathlib.Path) -> DataPlane:
    from aivmm.vmm import VMM

    for name, cfg in (
        ("on_gpu", _pbtxt("KIND_GPU", "gpus: [ 0 ]")),
        ("on_cpu", _pbtxt("KIND_CPU")),
        ("gpu_three", _pbtxt("KIND_GPU", "gpus: [ 3 ]")),
    ):
        _serve_models.scale(tmp_path / name / "1" / "model.onnx", 2.0)
        (tmp_path / name / "config.pbtxt").write_text(cfg)
    vmm = VMM(simulate=EXAMPLES / "h100-80gb.json")
    yield DataPlane(vmm, Repository(tmp_path), measure=False)
    vmm.close()


def _req(model: str, x: np.ndarray, version: str = "") -> InferRequest:
    from aivmm.dtypes import DType

    return InferRequest(model, version, {"x": x}, {"x": DType.from_numpy(x.dtype)})


def test_instance_group_kinds_pin_vendor_neutrally(plane: DataPlane) -> None:
    async def go() -> None:
        await plane.load("on_gpu")
        await plane.load("on_cpu")
        placement = {m["name"]: m["placement"] for m in plane.status()["models"]}
        assert "@nvidia:0" in placement["on_gpu"] and "@cpu:0" in placement["on_cpu"]
        x = np.ones((2, 4), np.float32)
        for name in ("on_gpu", "on_cpu"):
            resp = await plane.infer(_req(name, x))
            np.testing.assert_array_equal(resp.outputs[0][1], x * 2)
        with pytest.raises(ConfigError, match=r"asks for GPU 3 but this server has 1 such device\(s\): \['nvidia:0'\]"):
            await plane.load("gpu_three")
        assert plane.index()[0] == {"name": "gpu_three", "state": "UNAVAILABLE", "reason": plane.index()[0]["reason"]}

    asyncio.run(go())


def test_lookup_errors_and_input_checks(plane: DataPlane) -> None:
    async def go() -> None:
        with pytest.raises(ModelNotReadyError, match="not loaded"):
            plane.resolve("on_cpu")
        with pytest.raises(ModelNotFoundError, match="unknown model"):
            plane.resolve("ghost")
        with pytest.raises(ModelNotFoundError, match="no model 'ghost'"):
            await plane.load("ghost")
        assert "ghost" not in {r["name"] for r in plane.index()} and plane.metric_label("ghost") == "_unknown_"
        await plane.load("on_cpu")
        with pytest.raises(ModelNotFoundError, match="no loaded version 2"):
            plane.resolve("on_cpu", "2")
        with pytest.raises(InputError, match="sent as FP64 but the model expects FP32"):
            await plane.infer(_req("on_cpu", np.ones((1, 4))))
        with pytest.raises(InputError, match="x: float32"):  # the façade's shape check, with the signature
            await plane.infer(_req("on_cpu", np.ones((1, 5), np.float32)))
        assert plane.status()["models"][0]["errors"] == 2

    asyncio.run(go())


def test_reload_swaps_without_a_gap(plane: DataPlane) -> None:
    async def go() -> None:
        await plane.load("on_cpu")
        first = plane.resolve("on_cpu")
        x = np.ones((1, 4), np.float32)
        reload = asyncio.ensure_future(plane.load("on_cpu"))
        answers = 0
        while not reload.done():  # the old copy answers until the new one is swapped in
            await plane.infer(_req("on_cpu", x))
            answers += 1
            await asyncio.sleep(0)
        await reload
        assert answers > 0 and plane.resolve("on_cpu") is not first
        await plane.unload("on_cpu")
        assert not plane.model_ready("on_cpu")
        await plane.shutdown()
        assert not plane.ready()

    asyncio.run(go())


def test_a_model_with_sequence_io_is_refused_at_load_with_the_reason(tmp_path: pathlib.Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from aivmm.errors import UnsupportedModelError
    from aivmm.vmm import VMM

    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["s"], ["n"])],
        "seqlen",
        [seq],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "seqlen" / "1").mkdir(parents=True)
    onnx.save(model, tmp_path / "seqlen" / "1" / "model.onnx")
    with VMM() as vmm:
        plane = DataPlane(vmm, Repository(tmp_path), measure=False)
        with pytest.raises(UnsupportedModelError, match=r"KServe v2 carries tensors only, not s: seq\(float32\[n\]\)"):
            asyncio.run(plane.load("seqlen"))
        assert vmm.status()["models"] == {}  # nothing left loaded
