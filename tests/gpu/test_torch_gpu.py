"""The torch backend on an NVIDIA GPU (run there: ``pytest -m gpu tests/gpu/test_torch_gpu.py``).

Every zoo model, lowered from ONNX and run on CUDA, is compared with ONNX Runtime on the CPU in fp32
(the reference). Tolerances per precision, elementwise ``|got - ref| <= atol * max(1, max|ref|) + rtol * |ref|``:

=========  ======  ======  ==============================================================
precision  rtol    atol    why
=========  ======  ======  ==============================================================
fp32       1e-4    1e-4    IEEE fp32 (TF32 is off in fp32 sessions); kernel order differs
fp16       2e-2    2e-2    10-bit mantissa, errors accumulate over the layers
bf16       6e-2    6e-2    7-bit mantissa
=========  ======  ======  ==============================================================

Also checked: CUDA graphs and torch.compile give the eager answer; device tensors in are not copied and
native outputs stay on the GPU; concurrent runs on one captured graph agree with serial ones; offload to
host frees the GPU and reload restores the answers.
"""

from __future__ import annotations

import concurrent.futures
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from aivmm.backends import Config, registry  # noqa: E402
from aivmm.devices._types import Device, DeviceKind, Vendor  # noqa: E402
from aivmm.dtypes import Precision  # noqa: E402
from aivmm.models import load, zoo  # noqa: E402

pytestmark = pytest.mark.gpu
TOLERANCE = {Precision.FP32: (1e-4, 1e-4), Precision.FP16: (2e-2, 2e-2), Precision.BF16: (6e-2, 6e-2)}


@pytest.fixture(scope="module")
def gpu() -> Device:
    free, total = torch.cuda.mem_get_info(0)
    return Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, torch.cuda.get_device_name(0), total, free, index=0)


@pytest.fixture(scope="module")
def cpu() -> Device:
    return Device("cpu:0", DeviceKind.CPU, Vendor.OTHER, "host cpu", 0, 0)


@pytest.fixture(scope="module")
def backend():
    return registry.get("torch")


_REFS: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}


def _reference(name: str, size: str, batch: int, cpu: Device) -> tuple:
    spec = load(str(zoo.build(name, size=size)))
    feeds = zoo.sample_inputs(name, size=size, batch=batch, seed=0)
    key = (name, size, batch)
    if key not in _REFS:
        with registry.get("onnxruntime").load(spec, cpu, Config("onnxruntime", cpu.id)) as session:
            _REFS[key] = session.run(feeds)
    return spec, feeds, _REFS[key]


def _assert_close(got: dict, ref: dict, precision: Precision, where: str) -> None:
    rtol, atol = TOLERANCE[precision]
    assert list(got) == list(ref), where
    for name, want in ref.items():
        have = np.asarray(got[name])
        assert have.shape == want.shape and have.dtype == want.dtype, f"{where} {name}"
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(have, want, err_msg=f"{where} {name}")
            continue
        scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
        np.testing.assert_allclose(
            have.astype(np.float64),
            want.astype(np.float64),
            rtol=rtol,
            atol=atol * scale,
            err_msg=f"{where} {name} {precision.value}",
        )


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16, Precision.BF16])
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_tiny_on_cuda_matches_ort_cpu(backend, gpu, cpu, name, precision):
    spec, feeds, ref = _reference(name, "tiny", 2, cpu)
    config = Config("torch", gpu.id, precision)
    assert backend.check(spec, gpu, config), backend.check(spec, gpu, config).reasons
    with backend.load(spec, gpu, config) as session:
        got = session.run(feeds)
    _assert_close(got, ref, precision, f"{name}/tiny on {gpu.id}")


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
@pytest.mark.parametrize("name", ["resnet50", "bert-base"])
def test_full_models_on_cuda_match_ort_cpu(backend, gpu, cpu, name, precision):
    spec, feeds, ref = _reference(name, "full", 2, cpu)
    with backend.load(spec, gpu, Config("torch", gpu.id, precision)) as session:
        got = session.run(feeds)
        assert session.report.device_memory_bytes > 10 << 20
    _assert_close(got, ref, precision, f"{name}/full on {gpu.id}")


@pytest.mark.parametrize("name", ["resnet50", "bert-base", "gpt2", "dlrm", "fno", "lstm"])
def test_cuda_graphs_replay_gives_the_eager_answer(backend, gpu, cpu, name):
    spec, _, _ = _reference(name, "tiny", 2, cpu)
    eager = backend.load(spec, gpu, Config("torch", gpu.id))
    graphed = backend.load(spec, gpu, Config("torch", gpu.id, options={"cuda_graphs": True}))
    with eager, graphed:
        for batch, seed in ((2, 1), (2, 2), (3, 3)):  # new inputs, then a new shape (a second capture)
            feeds = zoo.sample_inputs(name, size="tiny", batch=batch, seed=seed)
            want = eager.run(feeds)
            got = graphed.run(feeds)
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{name} {key}")


def test_concurrent_runs_on_a_captured_graph_agree_with_serial(backend, gpu, cpu):
    spec, _, _ = _reference("resnet50", "tiny", 2, cpu)
    batches = [zoo.sample_inputs("resnet50", size="tiny", batch=2, seed=s) for s in range(8)]
    with backend.load(spec, gpu, Config("torch", gpu.id, options={"cuda_graphs": True})) as session:
        serial = [session.run(b)["logits"] for b in batches]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(lambda b: session.run(b)["logits"], batches * 3))
    for i, got in enumerate(parallel):
        np.testing.assert_array_equal(got, serial[i % len(batches)])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_gives_the_eager_answer(backend, gpu, cpu, mode):
    spec, feeds, ref = _reference("bert-base", "tiny", 2, cpu)
    with backend.load(spec, gpu, Config("torch", gpu.id, options={"compile": mode})) as session:
        first = session.run(feeds, output="native")
        again = session.run(zoo.sample_inputs("bert-base", size="tiny", batch=2, seed=5), output="native")
        assert not torch.equal(first["pooler_output"], again["pooler_output"])  # not overwritten by the replay
        got = session.run(feeds)
    _assert_close(got, ref, Precision.FP32, f"bert-base compiled {mode}")


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> pathlib.Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("torch_gpu") / "identity.onnx"
    onnx.save(model, str(path))
    return path


def test_device_tensors_are_not_copied_and_outputs_stay_on_the_gpu(backend, gpu, identity):
    spec = load(str(identity))
    x = torch.randn(3, 4, device="cuda")
    with backend.load(spec, gpu, Config("torch", gpu.id)) as session:
        y = session.run({"x": x}, output="native")["y"]
        host = session.run({"x": x})["y"]
    assert y.device.type == "cuda" and y.data_ptr() == x.data_ptr()
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, x.cpu().numpy())


def test_offload_frees_the_gpu_and_reload_restores(backend, gpu, cpu):
    spec, feeds, ref = _reference("bert-base", "tiny", 2, cpu)
    with backend.load(spec, gpu, Config("torch", gpu.id)) as session:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(0)
        assert session.offload_to_host() is True
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated(0) < before
        session.reload_to_device()
        _assert_close(session.run(feeds), ref, Precision.FP32, "after reload")


def test_peak_memory_counts_the_load_and_the_runs(backend, gpu, cpu):
    """What the planner reports as a torch session's memory: the CUDA allocator's peak since the load began."""
    spec, feeds, _ = _reference("bert-base", "tiny", 2, cpu)
    with backend.load(spec, gpu, Config("torch", gpu.id)) as session:
        loaded, source = session.peak_memory()
        assert source == "torch.cuda" and loaded >= session.report.device_memory_bytes > 0
        session.run(feeds)
        assert session.peak_memory()[0] >= loaded
    with backend.load(spec, cpu, Config("torch", cpu.id)) as on_cpu:
        assert on_cpu.peak_memory() is None


def test_a_gpu_torch_cannot_see_is_refused(backend):
    ghost = Device(
        f"nvidia:{torch.cuda.device_count()}",
        DeviceKind.GPU,
        Vendor.NVIDIA,
        "ghost",
        1 << 30,
        1 << 30,
        index=torch.cuda.device_count(),
    )
    support = backend.drives(ghost)
    assert not support and any("sees only" in r for r in support.reasons)
