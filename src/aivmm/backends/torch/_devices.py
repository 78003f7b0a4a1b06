"""Which devices torch drives, and the translation Device -> torch device string (here only).

Checks stay cheap: ``torch.cuda.is_available()`` and ``device_count()`` ask the driver without
creating a context; nothing here allocates on a device.
"""

from __future__ import annotations

from typing import Any

from aivmm.backends._base import Support
from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError


def _cuda_like(torch: Any, vendor: Vendor) -> tuple[bool, str]:
    """Whether this torch build drives the vendor's GPUs through torch.cuda, and why not."""
    if vendor is Vendor.NVIDIA:
        if not getattr(torch.version, "cuda", None):
            return False, f"this torch build ({torch.__version__}) has no CUDA support"
    elif vendor is Vendor.AMD:
        if not getattr(torch.version, "hip", None):
            return False, f"this torch build ({torch.__version__}) has no ROCm (HIP) support"
    else:
        return False, f"torch.cuda does not drive {vendor.value} GPUs"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no driver or no visible GPU)"
    return True, ""


def check_device(torch: Any, device: Device) -> Support:
    if device.kind is DeviceKind.CPU:
        return Support.yes()
    if device.kind is not DeviceKind.GPU:
        return Support.no(f"torch does not drive {device.kind.value} devices ({device.id})")
    if device.vendor in (Vendor.NVIDIA, Vendor.AMD):
        ok, why = _cuda_like(torch, device.vendor)
        if not ok:
            return Support.no(f"{device.id}: {why}")
        count = torch.cuda.device_count()
        if device.index >= count:
            return Support.no(f"{device.id}: torch sees only {count} GPU(s)")
        return Support.yes()
    if device.vendor is Vendor.INTEL:
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            return Support.no(f"{device.id}: this torch build has no Intel XPU support (torch.xpu unavailable)")
        if device.index >= xpu.device_count():
            return Support.no(f"{device.id}: torch sees only {xpu.device_count()} XPU(s)")
        return Support.yes()
    if device.vendor is Vendor.APPLE:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return Support.no(f"{device.id}: this torch build has no Apple MPS support")
        return Support.yes()
    return Support.no(f"torch does not drive {device.vendor.value} GPUs ({device.id})")


def torch_device(torch: Any, device: Device) -> Any:
    """The torch.device for ``device``; raises BackendUnavailableError naming what is missing."""
    support = check_device(torch, device)
    if not support:
        raise BackendUnavailableError("; ".join(support.reasons))
    if device.kind is DeviceKind.CPU:
        return torch.device("cpu")
    if device.vendor in (Vendor.NVIDIA, Vendor.AMD):
        # torch numbers GPUs in CUDA order; aivmm's index follows the same order (PCI bus) on both vendors.
        return torch.device("cuda", device.index)
    if device.vendor is Vendor.INTEL:
        return torch.device("xpu", device.index)
    return torch.device("mps")


def is_cuda(device: Device) -> bool:
    return device.kind is DeviceKind.GPU and device.vendor in (Vendor.NVIDIA, Vendor.AMD)
