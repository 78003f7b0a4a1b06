"""GPU paths of the tensor interop and the ONNX Runtime adapter (run on the CUDA machine: -m gpu).

With CPU-only onnxruntime (the project's GPU machine), device tensors fed to a CPU session are copied to
the host explicitly; with onnxruntime-gpu the CUDA session binds them by pointer (IOBinding).
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from _backend_models import random_inputs

from aivmm.backends import Config, registry
from aivmm.backends.tensors import PinnedStaging, dlpack_device, to_numpy, validate_feeds
from aivmm.devices._types import Device, DeviceKind, Vendor

pytestmark = pytest.mark.gpu
ORT = registry.get("onnxruntime")


def _torch():
    return pytest.importorskip("torch")


def test_cuda_tensor_feeds_a_cpu_session_through_an_explicit_copy(cpu, specs):
    torch = _torch()
    spec = specs["mlp"]
    feeds = random_inputs(spec, batch=4)
    on_gpu = {k: torch.from_numpy(v).to("cuda:0") for k, v in feeds.items()}
    assert dlpack_device(on_gpu["a"])[0] == 2
    with ORT.load(spec, cpu, Config("onnxruntime", cpu.id)) as session:
        expected = session.run(validate_feeds(spec, feeds))
        got = session.run(validate_feeds(spec, on_gpu), output="torch")
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name].numpy(), value)


def test_pinned_staging_round_trip_matches(cpu, specs):
    torch = _torch()
    staging = PinnedStaging()
    x = random_inputs(specs["small_cnn"], batch=1)["x"]
    on_gpu = staging.to_device(x, "cuda:0")
    np.testing.assert_array_equal(to_numpy(on_gpu), x)
    assert on_gpu.device == torch.device("cuda:0")


def _cuda_device() -> Device:
    torch = _torch()
    props = torch.cuda.get_device_properties(0)
    return Device(
        "nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, props.name, props.total_memory, props.total_memory // 2, index=0
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
    reason="needs onnxruntime-gpu (CUDAExecutionProvider)",
)
def test_cuda_session_binds_device_tensors_without_copy(specs):
    torch = _torch()
    spec = specs["mlp"]
    device = _cuda_device()
    feeds = random_inputs(spec, batch=4)
    with ORT.load(spec, device, Config("onnxruntime", device.id)) as session:
        assert session.providers[0] == "CUDAExecutionProvider"
        expected = session.run(validate_feeds(spec, feeds))
        on_gpu = {k: torch.from_numpy(v).to("cuda:0") for k, v in feeds.items()}
        native = session.run(validate_feeds(spec, on_gpu), output="native")
        as_torch = session.run(validate_feeds(spec, on_gpu), output="torch")
    for name, value in expected.items():
        assert native[name].device_name().lower() == "cuda"
        np.testing.assert_allclose(native[name].numpy(), value, rtol=1e-4, atol=1e-5)
        assert as_torch[name].is_cuda
        np.testing.assert_allclose(as_torch[name].cpu().numpy(), value, rtol=1e-4, atol=1e-5)
