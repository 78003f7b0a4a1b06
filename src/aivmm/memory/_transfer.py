"""The transfer layer: host <-> device copies and DLPack hand-offs, one implementation per vendor.

``transfer_for(device)`` picks the implementation by the device's kind and vendor (a lazy table:
an implementation's runtime is imported only when a device of its vendor asks for one):

- the CPU (and any simulated device): host memory *is* the device's memory, so moving is a view
  (DLPack where the source exports it, no copy) and a hand-off between numpy and torch shares the
  buffer;
- NVIDIA and AMD GPUs: through torch's CUDA device type (ROCm builds reuse it), with pinned
  staging for bulk weights (:class:`~aivmm.memory.PinnedUploader`); refused with the reason where
  torch sees no such GPU.

Public methods time and count (template methods); the vendor work is in the ``_hooks``. DLPack
is the exchange: every framework aivmm speaks (numpy, torch, cupy, jax) exports and imports it,
so a hand-off never copies and never goes through the host. The tensor conversions themselves are
:mod:`aivmm.backends.tensors` (one place for what a view or a copy of each framework is).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from aivmm._lazy import load
from aivmm.backends import tensors
from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError


class Transfer(abc.ABC):
    """Moves arrays between host memory and one device."""

    name: ClassVar[str]

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seconds = 0.0  # time spent in copies and hand-offs through this object
        self.nbytes = 0  # bytes of the arrays moved to or from the device (hand-offs move none)

    def to_device(self, value: Any) -> Any:
        """``value`` (numpy, a torch tensor, any DLPack exporter) as the device's own tensor."""
        return self._timed(self._to_device, value, count=True)

    def to_host(self, value: Any) -> np.ndarray:
        """A numpy array in host memory with ``value``'s data (a view where it is host memory already)."""
        out: np.ndarray = self._timed(self._to_host, value, count=True)
        return out

    def hand_off(self, value: Any, framework: str) -> Any:
        """The same memory seen by ``framework`` ("numpy", "torch", "cupy" or "jax") through DLPack:
        never a copy; refused (InputError) where that framework cannot see the device's memory."""
        return self._timed(lambda v: tensors.from_dlpack(v, framework), value, count=False)

    def _timed(self, hook: Callable[[Any], Any], value: Any, *, count: bool) -> Any:
        start = time.perf_counter()
        try:
            out = hook(value)
        finally:
            self.seconds += time.perf_counter() - start
        if count:
            self.nbytes += int(getattr(out, "nbytes", 0) or 0)
        return out

    @abc.abstractmethod
    def _to_device(self, value: Any) -> Any: ...

    def _to_host(self, value: Any) -> np.ndarray:
        return tensors.to_numpy(value)


class CpuTransfer(Transfer):
    """The host: moving is a view of the same memory (bfloat16 is seen as its uint16 bits, the
    carrier numpy has for it, as everywhere in aivmm)."""

    name = "cpu"

    def _to_device(self, value: Any) -> np.ndarray:
        return tensors.host_view(value)


# (kind, vendor) -> "module:Class"; a vendor's module is imported only when its device asks.
_IMPLEMENTATIONS: dict[tuple[DeviceKind, Vendor | None], str] = {
    (DeviceKind.CPU, None): "aivmm.memory._transfer:CpuTransfer",
    (DeviceKind.GPU, Vendor.NVIDIA): "aivmm.memory._cuda_transfer:CudaTransfer",
    (DeviceKind.GPU, Vendor.AMD): "aivmm.memory._cuda_transfer:CudaTransfer",
}


def transfer_for(device: Device) -> Transfer:
    """The transfer implementation for ``device``. Raises BackendUnavailableError naming why there
    is none (a vendor without one, or its runtime not seeing the device).

    A simulated device of any kind keeps its tensors in host memory (the simulated backend runs on
    the CPU), so it moves them as the CPU does."""
    host = device.kind is DeviceKind.CPU or device.simulated
    target = _IMPLEMENTATIONS.get((DeviceKind.CPU, None) if host else (device.kind, device.vendor))
    if target is None:
        raise BackendUnavailableError(
            f"no transfer layer for {device.vendor.value} {device.kind.value} devices ({device.id}); "
            f"aivmm moves tensors to CPUs and to NVIDIA and AMD GPUs"
        )
    implementation: type[Transfer] = load(target)
    return implementation(device)
