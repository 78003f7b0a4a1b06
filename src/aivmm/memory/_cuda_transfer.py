"""The CUDA transfer layer (NVIDIA, and AMD through ROCm's torch, which reuses the CUDA device type).

:class:`CudaTransfer` is the :class:`~aivmm.memory.Transfer` of these GPUs. Weights go to a GPU at
the bus's speed: one reusable pinned staging buffer, chunked async copies, and a pinned host tier.

A pageable ``tensor.to("cuda")`` per weight makes the driver stage every tensor through its own
small bounce buffer and synchronise, which reaches a fraction of the bus (~0.14 of the pinned peak
on an H100). :class:`PinnedUploader` allocates one pinned buffer, split in two halves: the CPU fills
one half while the DMA engine drains the other on a side stream, so a load from ordinary (pageable)
host memory runs near the pinned peak. :class:`PinnedHostTier` is the device -> host tier: it packs
a module's weights into one pinned allocation when it is evicted, so bringing it back is a single
DMA stream at the peak. torch is imported only when these are created (GPU code path; tested on the
device machine).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aivmm.backends import tensors
from aivmm.devices import Device
from aivmm.errors import BackendUnavailableError, ConfigError, missing_extra
from aivmm.memory._transfer import Transfer

DEFAULT_CHUNK_BYTES = 32 * 2**20
_ALIGN = 256


@dataclasses.dataclass(frozen=True)
class UploadReport:
    nbytes: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing_extra("torch", "torch") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("pinned transfers need a CUDA device; torch sees none")
    return torch


def _as_tensor(torch: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(value)


class CudaTransfer(Transfer):
    """Host -> GPU through one reused pinned staging buffer, GPU -> host by torch, DLPack hand-offs
    on the device (tested on the GPU machine)."""

    name = "cuda"

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        torch = _torch()
        if device.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"{device.id}: torch sees only {torch.cuda.device_count()} GPU(s)")
        self._torch = torch
        self._device = torch.device("cuda", device.index)
        self._staging = tensors.PinnedStaging()

    def _to_device(self, value: Any) -> Any:
        if tensors.is_host(value):
            host = value if isinstance(value, self._torch.Tensor) else tensors.host_view(value)
            return self._staging.to_device(host, str(self._device))
        return tensors.from_dlpack(value, "torch").to(self._device)  # no copy when it is on this GPU already


class PinnedUploader:
    """Copies host tensors (numpy or torch, any dtype) to one CUDA device through a double-buffered
    pinned staging area. One instance is reused for every load on its device; not thread-safe (the
    runtime loads one model at a time per device)."""

    def __init__(self, device_index: int = 0, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes < 2**20:
            raise ConfigError(f"chunk_bytes must be at least 1 MiB, got {chunk_bytes}")
        torch = _torch()
        self._torch = torch
        self.device = torch.device("cuda", device_index)
        self._chunk = chunk_bytes
        self._staging = torch.empty(2 * chunk_bytes, dtype=torch.uint8, pin_memory=True)
        self._stream = torch.cuda.Stream(device=self.device)
        self._done = [torch.cuda.Event(), torch.cuda.Event()]
        self._used = [False, False]
        self._half = 0

    def _copy(self, src_bytes: Any, dst_bytes: Any) -> None:
        torch = self._torch
        n = src_bytes.numel()
        for offset in range(0, n, self._chunk):
            size = min(self._chunk, n - offset)
            half = self._half
            if self._used[half]:
                self._done[half].synchronize()  # that half's previous DMA must have drained
            staging = self._staging[half * self._chunk : half * self._chunk + size]
            staging.copy_(src_bytes[offset : offset + size])  # host memcpy into pinned memory
            with torch.cuda.stream(self._stream):
                dst_bytes[offset : offset + size].copy_(staging, non_blocking=True)
                self._done[half].record(self._stream)
            self._used[half] = True
            self._half ^= 1

    def upload(self, tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], UploadReport]:
        """Device tensors with the same names, dtypes and shapes, and how fast the copy ran."""
        torch = self._torch
        items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
        start = time.perf_counter()
        # Memory handed out by the caching allocator may still be in use by work queued on the
        # current stream; the side stream must not write it before that work is done.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        out: dict[str, Any] = {}
        total = 0
        for name, value in items:
            src = _as_tensor(torch, value).contiguous()
            flat = src.reshape(-1).view(torch.uint8)
            dst = torch.empty(flat.numel(), dtype=torch.uint8, device=self.device)
            self._copy(flat, dst)
            out[name] = dst.view(src.dtype).view(src.shape)
            total += flat.numel()
        self._stream.synchronize()
        return out, UploadReport(total, time.perf_counter() - start)

    def move_module(self, module: Any) -> UploadReport:
        """Move a CPU ``torch.nn.Module``'s parameters and buffers to the device, in place."""
        named = [(f"p:{n}", p) for n, p in module.named_parameters()] + [
            (f"b:{n}", b) for n, b in module.named_buffers()
        ]
        moved, report = self.upload((n, t.data) for n, t in named)
        for name, tensor in named:
            tensor.data = moved[name]
        return report

    def close(self) -> None:
        self._stream.synchronize()
        self._staging = None


class PinnedHostTier:
    """A module's weights parked in one pinned host allocation while its device memory is freed."""

    def __init__(self, module: Any) -> None:
        torch = _torch()
        self._torch = torch
        self._module = module
        self._tensors = [t for t in (*module.parameters(), *module.buffers())]
        sizes = [t.numel() * t.element_size() for t in self._tensors]
        # 256-byte aligned slots: every dtype can be viewed in place, and DMA runs on aligned blocks.
        self._offsets, end = [], 0
        for size in sizes:
            self._offsets.append(end)
            end += -(-size // _ALIGN) * _ALIGN
        self.nbytes = end
        self._host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
        self._meta = [(t.dtype, t.shape, t.device) for t in self._tensors]
        self._stream = torch.cuda.Stream(device=self._meta[0][2] if self._meta else None)

    def offload(self) -> UploadReport:
        """Device -> pinned host; the device tensors are released."""
        torch = self._torch
        start = time.perf_counter()
        for t, off in zip(self._tensors, self._offsets):
            n = t.numel() * t.element_size()
            self._host[off : off + n].copy_(t.data.reshape(-1).view(torch.uint8), non_blocking=True)
        torch.cuda.synchronize()
        for t in self._tensors:
            t.data = torch.empty(0, dtype=t.dtype)
        return UploadReport(self.nbytes, time.perf_counter() - start)

    def restore(self) -> UploadReport:
        """Pinned host -> device in one stream of DMA copies (no staging needed: the source is pinned)."""
        torch = self._torch
        start = time.perf_counter()
        device = self._meta[0][2] if self._meta else None
        block = torch.empty(self.nbytes, dtype=torch.uint8, device=device)
        self._stream.wait_stream(torch.cuda.current_stream(device))  # see PinnedUploader.upload
        with torch.cuda.stream(self._stream):
            block.copy_(self._host, non_blocking=True)
        self._stream.synchronize()
        for t, off, (dtype, shape, _) in zip(self._tensors, self._offsets, self._meta):
            n = dtype.itemsize * int(torch.Size(shape).numel())
            t.data = block[off : off + n].view(dtype).view(shape)
        return UploadReport(self.nbytes, time.perf_counter() - start)


def measure_pinned_peak(device_index: int = 0, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of one large pinned host-to-device copy (the best of ``repeats``)."""
    torch = _torch()
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", device_index))
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, nbytes / (time.perf_counter() - t0))
    return best
