"""Where and in what precision a transformers model runs on torch (the LLM generation path).

The llm package names a device by aivmm's id; this adapter turns it into a torch device and the
dtype generation uses there, so vendor strings ("cuda:0") stay in the torch backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aivmm.backends.torch._devices import check_device, is_cuda, torch_device
from aivmm.devices import Device, DeviceKind
from aivmm.errors import BackendUnavailableError

# config.json "torch_dtype"/"dtype" -> the dtype a GPU runs; fp32 checkpoints run fp16 there
# (half the bytes a decode step reads; the step is memory-bound)
_GPU_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float16"}


@dataclasses.dataclass(frozen=True)
class TorchPlacement:
    """A torch device and dtype for one aivmm device."""

    device_id: str
    torch_device: Any  # torch.device
    dtype: Any  # torch.dtype
    precision: str  # "fp32" / "fp16" / "bf16", as plans name it
    cuda: bool  # CUDA (or ROCm through torch.cuda): streams, events and CUDA graphs are there

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def placement(device: Device | None, config_dtype: str | None = None) -> TorchPlacement:
    """The placement on ``device`` (None: the CPU): fp32 on a CPU; on a GPU the checkpoint's half
    precision (bf16 checkpoints stay bf16 where the GPU has it, everything else fp16)."""
    import torch

    if device is None or device.kind is DeviceKind.CPU:
        return TorchPlacement(device.id if device else "cpu", torch.device("cpu"), torch.float32, "fp32", False)
    support = check_device(torch, device)
    if not support:
        raise BackendUnavailableError("; ".join(support.reasons))
    name = _GPU_DTYPES.get(str(config_dtype or "float32"), "float16")
    tdev = torch_device(torch, device)
    cuda = is_cuda(device)
    if name == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        name = "float16"
    dtype = getattr(torch, name)
    return TorchPlacement(device.id, tdev, dtype, "bf16" if name == "bfloat16" else "fp16", cuda)


def supports(device: Device) -> tuple[bool, str]:
    """Whether torch drives ``device`` here, and why not."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    support = check_device(torch, device)
    return bool(support), "; ".join(support.reasons)
