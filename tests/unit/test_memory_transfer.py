"""The transfer interface: chosen by device vendor; on the CPU a real round trip through numpy and
torch that shares memory (DLPack) instead of copying. The CUDA implementation runs on the device
machine (tests/gpu) and is refused with its reason here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError, ConfigError, InputError
from aivmm.memory import CpuTransfer, Transfer, transfer_for

CPU = Device("cpu:0", DeviceKind.CPU, Vendor.AMD, "test cpu", 1 << 30, 1 << 30)


def test_cpu_round_trip_of_numpy_shares_the_buffer() -> None:
    transfer = transfer_for(CPU)
    assert isinstance(transfer, CpuTransfer) and isinstance(transfer, Transfer)
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_device = transfer.to_device(host)
    back = transfer.to_host(on_device)
    np.testing.assert_array_equal(back, host)
    assert np.shares_memory(back, host)
    as_torch = transfer.hand_off(on_device, "torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (3, 4) and as_torch.dtype == torch.float32
    as_torch[0, 0] = -1.0  # one buffer: the numpy side sees the write
    assert host[0, 0] == -1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_cpu_round_trip_of_torch_tensors_without_copies(dtype: torch.dtype) -> None:
    transfer = transfer_for(CPU)
    tensor = (torch.arange(24).reshape(4, 6) % 3).to(dtype).T  # strided: a transposed view
    on_device = transfer.to_device(tensor)
    assert isinstance(on_device, np.ndarray) and on_device.shape == (6, 4)
    np.testing.assert_array_equal(transfer.to_host(on_device), tensor.numpy())
    back = transfer.hand_off(on_device, "torch")
    assert back.data_ptr() == tensor.data_ptr() and back.stride() == tensor.stride() and back.dtype == dtype
    assert transfer.hand_off(tensor, "torch").data_ptr() == tensor.data_ptr()
    assert transfer.nbytes == 2 * tensor.numel() * tensor.element_size()  # to_device and to_host; hand-offs none


def test_bfloat16_moves_as_its_bits_and_comes_back() -> None:
    transfer = transfer_for(CPU)
    tensor = torch.linspace(-2, 2, 8, dtype=torch.bfloat16)
    bits = transfer.to_device(tensor)  # numpy has no bfloat16: its uint16 carrier, same memory
    assert bits.dtype == np.uint16 and bits.__array_interface__["data"][0] == tensor.data_ptr()
    assert torch.equal(transfer.hand_off(bits, "torch").view(torch.bfloat16), tensor)


def test_a_tensor_that_records_gradients_hands_off_its_data() -> None:
    weights = torch.ones(3, requires_grad=True)
    view = transfer_for(CPU).to_host(weights)
    np.testing.assert_array_equal(view, np.ones(3, np.float32))
    assert view.__array_interface__["data"][0] == weights.data_ptr()


def test_what_cannot_move_says_why() -> None:
    transfer = transfer_for(CPU)
    with pytest.raises(ConfigError, match="unknown output framework 'jax2'"):
        transfer.hand_off(np.ones(2), "jax2")
    npu = Device("intel:npu:0", DeviceKind.NPU, Vendor.INTEL, "test npu", 0, 0)
    with pytest.raises(BackendUnavailableError, match="no transfer layer for intel npu"):
        transfer_for(npu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_transfer_is_refused_without_a_gpu() -> None:
    gpu = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, "test gpu", 1 << 30, 1 << 30)
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        transfer_for(gpu)


@pytest.mark.gpu
def test_cuda_round_trip_and_device_hand_off() -> None:
    gpu = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, "gpu", 1 << 30, 1 << 30)
    transfer = transfer_for(gpu)
    host = np.arange(1 << 20, dtype=np.float32)
    on_device = transfer.to_device(host)
    assert on_device.is_cuda and on_device.device.index == 0
    np.testing.assert_array_equal(transfer.to_host(on_device), host)
    assert transfer.hand_off(on_device, "torch").data_ptr() == on_device.data_ptr()
    with pytest.raises(InputError, match="host memory"):
        transfer.hand_off(on_device, "numpy")
    assert transfer.nbytes == 2 * host.nbytes


def test_a_simulated_gpu_moves_as_the_host_does() -> None:
    gpu = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, "simulated gpu", 1 << 30, 1 << 30, simulated=True)
    transfer = transfer_for(gpu)
    host = np.arange(6, dtype=np.float32)
    assert isinstance(transfer, CpuTransfer) and np.shares_memory(transfer.to_device(host), host)
