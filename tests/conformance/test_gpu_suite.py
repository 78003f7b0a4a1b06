"""The ONNX backend suite on an NVIDIA GPU ("CUDA" in ONNX device strings -> aivmm's nvidia:0).

Run on the device machine: ``python -m pytest -q -m gpu tests/conformance``. Skipped without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from aivmm import _conformance
from aivmm._conformance import Status
from aivmm.onnx_backend import AivmmBackend, with_backend

# A spread of operator families a GPU backend must get right (elementwise, reductions, matmul, conv,
# normalisation, indexing, shape ops, activations).
CASES = [
    "test_abs_cuda",
    "test_add_bcast_cuda",
    "test_relu_cuda",
    "test_sigmoid_cuda",
    "test_matmul_2d_cuda",
    "test_gemm_default_no_bias_cuda",
    "test_conv_with_strides_padding_cuda",
    "test_maxpool_2d_default_cuda",
    "test_reduce_mean_default_axes_keepdims_example_cuda",
    "test_softmax_axis_1_cuda",
    "test_gather_0_cuda",
    "test_transpose_default_cuda",
    "test_reshape_reordered_all_dims_cuda",
    "test_concat_2d_axis_0_cuda",
    "test_batchnorm_example_cuda",
    "test_layer_normalization_2d_axis0_cuda",
]


@pytest.mark.gpu
def test_cuda_is_a_supported_device() -> None:
    assert AivmmBackend.supports_device("CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("runner", ["auto", "torch"])
def test_node_cases_on_cuda(runner: str) -> None:
    backend = _conformance.backend_for(runner)
    if not backend.supports_device("CUDA"):
        pytest.fail(f"{runner} does not drive CUDA on this machine")
    table = _conformance.cases(backend, kinds=("node",), device="CUDA")
    bad = []
    for name in CASES:
        out = _conformance.run_case(table[name])
        if out.status is not Status.PASS:
            bad.append(f"{name}: {out.status.value}: {out.reason} ({out.detail})")
    assert not bad, "\n".join(bad)


@pytest.mark.gpu
def test_auto_places_on_the_gpu_when_asked() -> None:
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    with with_backend(None).prepare(_matmul_model(), "CUDA") as rep:
        (y,) = rep.run([x, x])
        assert "@nvidia:0" in rep.config, rep.attempts
    np.testing.assert_allclose(y, x @ x, rtol=1e-3, atol=1e-3)  # TF32 matmul on the GPU is allowed


def _matmul_model():  # type: ignore[no-untyped-def]
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 64]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
