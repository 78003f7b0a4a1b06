"""Weights to a GPU through one reusable pinned staging buffer, chunked and asynchronous.

A pageable ``tensor.to("cuda")`` per weight makes the driver stage every tensor through its own
small bounce buffer and synchronise, which reaches a fraction of the bus. Here one pinned buffer,
split in two halves, is filled by the CPU while the other half is copied by the DMA engine on a
side stream, so the copy runs near the measured pinned host-to-device peak. torch is imported
only when an uploader is created (GPU code path; tested on the device machine).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from aivmm.errors import BackendUnavailableError, ConfigError, missing_extra

DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class UploadReport:
    nbytes: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


class PinnedUploader:
    """Copies numpy arrays to one CUDA device through a double-buffered pinned staging area."""

    def __init__(self, device_index: int = 0, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if chunk_bytes < 2**20:
            raise ConfigError(f"chunk_bytes must be at least 1 MiB, got {chunk_bytes}")
        try:
            import torch
        except ImportError as exc:
            raise missing_extra("torch", "torch") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailableError("PinnedUploader needs a CUDA device; torch sees none")
        self._torch = torch
        self._device = torch.device("cuda", device_index)
        self._chunk = chunk_bytes
        # One allocation, two halves: the CPU fills one while the DMA engine drains the other.
        self._staging = torch.empty(2 * chunk_bytes, dtype=torch.uint8, pin_memory=True)
        self._stream = torch.cuda.Stream(device=self._device)
        self._done = [torch.cuda.Event(), torch.cuda.Event()]
        self._used = [False, False]

    def upload(
        self, arrays: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
    ) -> tuple[dict[str, Any], UploadReport]:
        """Device tensors (same names, dtypes, shapes) and how fast the copy ran."""
        torch = self._torch
        items = list(arrays.items()) if isinstance(arrays, Mapping) else list(arrays)
        start = time.perf_counter()
        out: dict[str, Any] = {}
        total = 0
        half = 0
        for name, array in items:
            src = np.ascontiguousarray(array)
            flat = src.reshape(-1).view(np.uint8)
            dst = torch.empty(src.nbytes, dtype=torch.uint8, device=self._device)
            for offset in range(0, src.nbytes, self._chunk):
                n = min(self._chunk, src.nbytes - offset)
                if self._used[half]:
                    self._done[half].synchronize()  # that half's previous copy must be finished
                staging = self._staging[half * self._chunk: half * self._chunk + n]
                staging.numpy()[:] = flat[offset: offset + n]
                with torch.cuda.stream(self._stream):
                    dst[offset: offset + n].copy_(staging, non_blocking=True)
                    self._done[half].record(self._stream)
                self._used[half] = True
                half ^= 1
            out[name] = dst.view(_torch_dtype(torch, src.dtype)).reshape(src.shape)
            total += src.nbytes
        self._stream.synchronize()
        return out, UploadReport(total, time.perf_counter() - start)

    def close(self) -> None:
        self._stream.synchronize()
        self._staging = None  # type: ignore[assignment]


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def measure_pinned_peak(device_index: int = 0, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of one large pinned host-to-device copy (the best of ``repeats``)."""
    import torch

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
