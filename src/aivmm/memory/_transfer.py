"""The transfer layer: host <-> device copies and DLPack hand-offs, one implementation per vendor.

``transfer_for(device)`` picks the implementation by the device's kind and vendor (a lazy table:
an implementation's runtime is imported only when a device of its vendor asks for one):

- the CPU: host memory *is* the device's memory, so moving is a view (DLPack where the source
  exports it, no copy) and a hand-off between numpy and torch shares the buffer;
- NVIDIA and AMD GPUs: through torch's CUDA device type (ROCm builds reuse it), with pinned
  staging for bulk weights (:class:`~aivmm.memory.PinnedUploader`); refused with the reason where
  torch sees no such GPU.

Public methods validate and time (template methods); the vendor work is in the ``_hooks``.
DLPack is the exchange: every framework aivmm speaks (numpy, torch, cupy, jax) exports and
imports it, so a hand-off never copies and never goes through the host.
"""

from __future__ import annotations

import abc
import importlib
import time
from typing import Any, ClassVar

import numpy as np

from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError, ConfigError, missing_extra

FRAMEWORKS = ("numpy", "torch")


class Transfer(abc.ABC):
    """Moves arrays between host memory and one device."""

    name: ClassVar[str]

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seconds = 0.0  # time spent in copies and hand-offs through this object
        self.nbytes = 0  # bytes moved to or from the device (hand-offs move none)

    def to_device(self, value: Any) -> Any:
        """``value`` (numpy, a host torch tensor, any DLPack exporter) as the device's own tensor."""
        return self._timed(self._to_device, value)

    def to_host(self, value: Any) -> np.ndarray:
        """A numpy array in host memory with ``value``'s data."""
        out: np.ndarray = self._timed(self._to_host, value)
        return out

    def hand_off(self, value: Any, framework: str) -> Any:
        """The same memory seen by ``framework`` ("numpy" or "torch") through DLPack: no copy."""
        if framework not in FRAMEWORKS:
            raise ConfigError(f"unknown framework {framework!r}; expected one of {list(FRAMEWORKS)}")
        start = time.perf_counter()
        try:
            return self._hand_off(_exportable(value), framework)
        finally:
            self.seconds += time.perf_counter() - start

    def _timed(self, hook: Any, value: Any) -> Any:
        start = time.perf_counter()
        out = hook(_exportable(value))
        self.seconds += time.perf_counter() - start
        self.nbytes += int(getattr(out, "nbytes", 0) or 0)
        return out

    @abc.abstractmethod
    def _to_device(self, value: Any) -> Any: ...

    @abc.abstractmethod
    def _to_host(self, value: Any) -> np.ndarray: ...

    @abc.abstractmethod
    def _hand_off(self, value: Any, framework: str) -> Any: ...


class CpuTransfer(Transfer):
    """The host: every move is a view of the same memory where the source allows it."""

    name = "cpu"

    def _to_device(self, value: Any) -> np.ndarray:
        return _host_view(value)

    def _to_host(self, value: Any) -> np.ndarray:
        return _host_view(value)

    def _hand_off(self, value: Any, framework: str) -> Any:
        if framework == "numpy":
            return _host_view(value)
        torch = _import("torch", "torch")
        if isinstance(value, torch.Tensor):
            return value
        return torch.from_dlpack(value)


def _exportable(value: Any) -> Any:
    """A torch tensor that records gradients cannot export DLPack; its data can (no copy)."""
    detach = getattr(value, "detach", None)
    if callable(detach) and getattr(value, "requires_grad", False):
        return detach()
    return value


def _host_view(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (RuntimeError, BufferError, TypeError) as exc:  # a dtype numpy lacks (bfloat16), device memory
            raise ConfigError(
                f"a {type(value).__module__}.{type(value).__name__} of dtype {getattr(value, 'dtype', '?')} cannot "
                f"be viewed as a host numpy array ({exc}); convert it to a numpy dtype first"
            ) from exc
    return np.asarray(value)


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(module, extra) from exc


# (kind, vendor) -> "module:Class"; a vendor's module is imported only when its device asks.
_IMPLEMENTATIONS: dict[tuple[DeviceKind, Vendor | None], str] = {
    (DeviceKind.CPU, None): "aivmm.memory._transfer:CpuTransfer",
    (DeviceKind.GPU, Vendor.NVIDIA): "aivmm.memory._cuda_transfer:CudaTransfer",
    (DeviceKind.GPU, Vendor.AMD): "aivmm.memory._cuda_transfer:CudaTransfer",
}


def transfer_for(device: Device) -> Transfer:
    """The transfer implementation for ``device``. Raises BackendUnavailableError naming why there
    is none (a vendor without one, or its runtime not seeing the device)."""
    target = _IMPLEMENTATIONS.get((device.kind, None if device.kind is DeviceKind.CPU else device.vendor))
    if target is None:
        raise BackendUnavailableError(
            f"no transfer layer for {device.vendor.value} {device.kind.value} devices ({device.id}); "
            f"aivmm moves tensors to CPUs and to NVIDIA and AMD GPUs"
        )
    module, cls = target.split(":")
    implementation: type[Transfer] = getattr(importlib.import_module(module), cls)
    return implementation(device)
