"""Tensor interop: feed validation errors show the signature; host tensors are never copied."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aivmm.backends import tensors
from aivmm.dtypes import DType
from aivmm.errors import ConfigError, InputError
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec

SPEC = ModelSpec(
    name="two_in",
    format=ModelFormat.ONNX,
    inputs=(TensorSpec("ids", DType.INT64, ("batch", 4)), TensorSpec("img", DType.FLOAT32, ("batch", 3, 8, 8))),
    outputs=(TensorSpec("y", DType.FLOAT32, ("batch", 10)),),
)
ONE = ModelSpec(
    name="one_in",
    format=ModelFormat.ONNX,
    inputs=(TensorSpec("x", DType.FLOAT32, (None, 16)),),
    outputs=(TensorSpec("y", DType.FLOAT32, (None, 16)),),
)


def good() -> dict[str, np.ndarray]:
    return {"ids": np.zeros((2, 4), np.int64), "img": np.zeros((2, 3, 8, 8), np.float32)}


def test_valid_feeds_come_back_in_model_order_and_uncopied():
    feeds = good()
    out = tensors.validate_feeds(SPEC, {"img": feeds["img"], "ids": feeds["ids"]})
    assert list(out) == ["ids", "img"]
    assert out["img"] is feeds["img"] and out["ids"] is feeds["ids"]


def test_single_array_for_a_one_input_model():
    x = np.ones((3, 16), np.float32)
    assert tensors.validate_feeds(ONE, x)["x"] is x


def test_single_array_for_a_two_input_model_names_the_inputs():
    with pytest.raises(InputError, match=r"2 inputs \(ids, img\).*signature: inputs \(ids: int64\[batch, 4\]"):
        tensors.validate_feeds(SPEC, np.zeros((2, 4), np.int64))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update(extra=f.pop("img")), r"unknown input\(s\) \['extra'\]; missing input\(s\) \['img'\]"),
        (lambda f: f.pop("ids"), r"missing input\(s\) \['ids'\]"),
        (lambda f: f.update(ids=f["ids"].astype(np.int32)), r"'ids'.*dtype int32, expected int64"),
        (lambda f: f.update(img=f["img"][0]), r"'img'.*rank 3.*expected rank 4"),
        (lambda f: f.update(img=np.zeros((2, 3, 8, 9), np.float32)), r"'img'.*dimension 3 is 9, expected 8"),
        (lambda f: f.update(img=np.zeros((5, 3, 8, 8), np.float32)), r"dimension 'batch' is 2 in input 'ids' but 5"),
    ],
)
def test_bad_feeds_raise_with_the_signature(change, message):
    feeds = good()
    change(feeds)
    with pytest.raises(InputError, match=message) as info:
        tensors.validate_feeds(SPEC, feeds)
    assert SPEC.signature() in str(info.value)


def test_lists_become_arrays_and_unreadable_values_are_refused():
    out = tensors.validate_feeds(ONE, [[0.0] * 16])
    assert isinstance(out["x"], np.ndarray) and out["x"].shape == (1, 16)
    with pytest.raises(InputError):
        tensors.validate_feeds(ONE, {"x": object()})


def test_torch_cpu_tensor_is_validated_and_viewed_without_copy():
    torch = pytest.importorskip("torch")
    t = torch.arange(32, dtype=torch.float32).reshape(2, 16).requires_grad_(True)
    fed = tensors.validate_feeds(ONE, t)["x"]
    assert fed is t
    view = tensors.to_numpy(fed)
    assert view.ctypes.data == t.data_ptr()
    assert tensors.framework_of(t) is tensors.Framework.TORCH
    assert tensors.is_host(t)
    with pytest.raises(InputError, match="dtype float64"):
        tensors.validate_feeds(ONE, t.double())


def test_torch_bfloat16_is_read_as_its_bits():
    torch = pytest.importorskip("torch")
    t = torch.ones(2, 3, dtype=torch.bfloat16)
    assert tensors.dtype_of(t) is DType.BFLOAT16
    bits = tensors.host_view(t)
    assert bits.dtype.itemsize == 2 and bits.ctypes.data == t.data_ptr()
    assert int(bits.view(np.uint16)[0, 0]) == 0x3F80  # 1.0 in bfloat16


def test_dlpack_objects_are_imported_without_copy():
    torch = pytest.importorskip("torch")
    t = torch.zeros(4, 16)

    class Exporter:  # any object speaking DLPack, from no known framework
        def __dlpack__(self, **kwargs):
            return t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return t.__dlpack_device__()

    exporter = Exporter()
    assert tensors.framework_of(exporter) is tensors.Framework.DLPACK
    array = tensors.to_numpy(exporter)
    assert array.ctypes.data == t.data_ptr()
    fed = tensors.validate_feeds(ONE, exporter)["x"]
    assert np.shares_memory(fed, array)
    back = tensors.from_dlpack(np.ones((2, 2), np.float32), "torch")
    assert isinstance(back, torch.Tensor)


def test_numpy_outputs_become_torch_without_copy():
    torch = pytest.importorskip("torch")
    outputs = {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}
    converted = tensors.convert_outputs(outputs, "torch")
    assert isinstance(converted["y"], torch.Tensor)
    assert converted["y"].data_ptr() == outputs["y"].ctypes.data
    assert tensors.convert_outputs(outputs, "numpy") is outputs


def test_unknown_output_kind_and_missing_framework():
    with pytest.raises(ConfigError, match="unknown output kind"):
        tensors.convert_outputs({"y": np.zeros(1)}, "tensorflow")
    if "cupy" not in sys.modules:
        try:
            import cupy  # noqa: F401
        except ImportError:
            with pytest.raises(ConfigError, match="cupy is not installed"):
                tensors.convert_outputs({"y": np.zeros(1)}, "cupy")


def test_interop_imports_no_framework():
    code = (
        "import sys, numpy as np; from aivmm.backends import tensors; from aivmm.models._spec import *; "
        "tensors.framework_of(np.zeros(1)); tensors.to_numpy(np.zeros(1)); "
        "print([m for m in ('torch', 'cupy', 'jax') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_device_tensor_is_not_viewed_as_host():
    class OnGpu:
        dtype = np.dtype(np.float32)
        shape = (1, 16)

        def __dlpack__(self, **kwargs):
            raise AssertionError("must not be exported to the host")

        def __dlpack_device__(self):
            return (tensors.DLPACK_CUDA, 0)

    assert not tensors.is_host(OnGpu())
    with pytest.raises(InputError, match="not in host memory"):
        tensors.host_view(OnGpu())
    with pytest.raises(InputError, match="cannot copy"):
        tensors.to_numpy(OnGpu())


@pytest.mark.gpu
def test_pinned_staging_reuses_its_buffer():
    torch = pytest.importorskip("torch")
    staging = tensors.PinnedStaging()
    a = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    on_gpu = staging.to_device(a, "cuda:0")
    assert on_gpu.is_cuda
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), a)
    capacity = staging.capacity_bytes
    assert capacity >= a.nbytes and staging._buffer.is_pinned()
    smaller = staging.to_device(a[:2], "cuda:0")
    assert staging.capacity_bytes == capacity  # reused, not reallocated
    np.testing.assert_array_equal(smaller.cpu().numpy(), a[:2])
    del torch


@pytest.mark.gpu
def test_cuda_tensor_to_numpy_copies_to_host():
    torch = pytest.importorskip("torch")
    t = torch.arange(8, dtype=torch.float32, device="cuda:0")
    assert not tensors.is_host(t)
    np.testing.assert_array_equal(tensors.to_numpy(t), np.arange(8, dtype=np.float32))
    with pytest.raises(InputError):
        tensors.host_view(t)


def test_a_symbol_repeated_in_one_input_must_have_one_size():
    # found by the property test: the one-input fast path once skipped this check
    spec = ModelSpec(
        name="square", format=ModelFormat.ONNX, inputs=(TensorSpec("x", DType.FLOAT32, (1, "n", "n")),), outputs=()
    )
    ok = np.zeros((1, 3, 3), np.float32)
    assert tensors.validate_feeds(spec, ok)["x"] is ok
    for bad in (np.zeros((1, 1, 2), np.float32), {"x": np.zeros((1, 2, 3), np.float32)}):
        with pytest.raises(InputError, match="dimension 'n'"):
            tensors.validate_feeds(spec, bad)
