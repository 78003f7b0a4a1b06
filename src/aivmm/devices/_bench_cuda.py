"""NVIDIA capability measurements through torch.cuda (run only where a CUDA GPU is present).

Timed with CUDA events around the work alone; sizes grow until one run takes ~2 ms. TF32 is
switched off for the fp32 figure (and restored) so fp32 means IEEE fp32; the TF32 figure is
reported separately because it is what torch uses by default for convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aivmm.devices._bench_timing import Budget, grow, median_seconds
from aivmm.devices._types import Device
from aivmm.errors import DeviceNotFoundError

_SIZES = (1024, 2048, 4096, 8192, 16384)
_TARGET_S = 0.002


def torch_index(device: Device) -> int:
    """The torch.cuda index of an NVML-numbered device, matched by UUID or PCI bus (the two
    numberings differ under CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER=FASTEST_FIRST)."""
    import torch

    uuid = str(device.properties.get("uuid", "")).lower().removeprefix("gpu-")
    bus = str(device.properties.get("pci_bus_id", "")).lower()
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        their_uuid = str(getattr(props, "uuid", "")).lower().removeprefix("gpu-")
        if uuid and their_uuid and their_uuid == uuid and set(uuid) - {"0", "-"}:
            return i
        domain, pci_bus, pci_dev = (getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
        if bus and None not in (domain, pci_bus, pci_dev) and bus.endswith(f"{pci_bus:02x}:{pci_dev:02x}.0"):
            return i
    if torch.cuda.device_count() == 1 and device.index == 0:
        return 0
    raise DeviceNotFoundError(f"{device.id} ({device.name}) is not visible to torch.cuda (check CUDA_VISIBLE_DEVICES)")


def _event_run(torch: Any, fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return run


def _square(torch: Any, make: Callable[[int], Callable[[], object]], budget: Budget) -> float:
    ops: dict[int, Callable[[], object]] = {}

    def time_at(n: int) -> float:
        ops.clear()  # free the previous size's operands before allocating the next
        torch.cuda.empty_cache()
        ops[n] = make(n)
        run = _event_run(torch, ops[n])
        run()
        return run()

    n = grow(time_at, _SIZES, target_s=_TARGET_S, budget=budget)
    if n not in ops:
        ops.clear()
        ops[n] = make(n)
    seconds = median_seconds(_event_run(torch, ops[n]), budget_s=min(1.0, budget.left()), min_reps=5, max_reps=50)
    ops.clear()
    return 2.0 * n**3 / seconds / 1e12


def matmul_tflops(device: Device, budget: Budget) -> tuple[dict[str, float], list[str]]:
    import torch

    index = torch_index(device)
    dev = torch.device("cuda", index)
    cc = torch.cuda.get_device_capability(index)
    results: dict[str, float] = {}
    notes: list[str] = []

    def floats(dtype: Any) -> Callable[[int], Callable[[], object]]:
        def make(n: int) -> Callable[[], object]:
            a = torch.randn((n, n), device=dev, dtype=dtype)
            b = torch.randn((n, n), device=dev, dtype=dtype)
            out = torch.empty((n, n), device=dev, dtype=dtype)
            return lambda: torch.matmul(a, b, out=out)

        return make

    def int8(n: int) -> Callable[[], object]:
        a = torch.randint(-64, 64, (n, n), device=dev, dtype=torch.int8)
        # Column-major B (cuBLASLt's "TN" layout) is the int8 tensor-core path; row-major B measured
        # 130 TOPS on the H100 (of ~1979 dense), far below what int8 models get.
        b = torch.randint(-64, 64, (n, n), device=dev, dtype=torch.int8).t().contiguous().t()
        return lambda: torch._int_mm(a, b)

    def fp8(n: int) -> Callable[[], object]:
        a = torch.randn((n, n), device=dev).to(torch.float8_e4m3fn)
        b = torch.randn((n, n), device=dev).to(torch.float8_e4m3fn).t().contiguous().t()  # column-major B
        one = torch.ones((), device=dev)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    plan: list[tuple[str, Callable[[int], Callable[[], object]]]] = [
        ("fp32", floats(torch.float32)),
        ("tf32", floats(torch.float32)),
        ("fp16", floats(torch.float16)),
    ]
    if cc >= (8, 0):
        plan.append(("bf16", floats(torch.bfloat16)))
    plan.append(("int8", int8))
    if cc >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        plan.append(("fp8", fp8))
    saved = torch.backends.cuda.matmul.allow_tf32
    with torch.cuda.device(index), torch.inference_mode():
        for position, (precision, make) in enumerate(plan):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            try:
                share = Budget(budget.share(len(plan) - position + 2))  # keep some for bandwidth and copies
                results[precision] = _square(torch, make, share)
            except Exception as exc:  # a precision this torch/GPU pair cannot run is reported, not fatal
                notes.append(f"{precision} matmul not measured: {type(exc).__name__}: {exc}")
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
    return results, notes


def bandwidths(device: Device, budget: Budget) -> dict[str, float]:
    """Device memory copy bandwidth and host<->device copies, GB/s (1e9 bytes)."""
    import torch

    index = torch_index(device)
    dev = torch.device("cuda", index)
    free = int(device.memory_free_bytes or device.memory_total_bytes)
    size = max(64 * 2**20, min(1024 * 2**20, free // 8))
    out: dict[str, float] = {}
    with torch.cuda.device(index):
        buffers = [torch.empty(size, dtype=torch.uint8, device=dev) for _ in range(2)]
        copy = _event_run(torch, lambda: buffers[1].copy_(buffers[0]))
        seconds = median_seconds(copy, budget_s=min(1.0, budget.share(4)))
        out["memory_bandwidth_gbps"] = 2 * size / seconds / 1e9
        buffers.clear()  # give the memory back before the host-copy buffers are allocated
        host_size = min(size, 256 * 2**20)
        target = torch.empty(host_size, dtype=torch.uint8, device=dev)
        pinned = torch.empty(host_size, dtype=torch.uint8).pin_memory()
        pageable = torch.empty(host_size, dtype=torch.uint8)
        for key, fn in (
            ("h2d_pinned_gbps", lambda: target.copy_(pinned, non_blocking=True)),
            ("h2d_pageable_gbps", lambda: target.copy_(pageable)),
            ("d2h_pinned_gbps", lambda: pinned.copy_(target, non_blocking=True)),
        ):
            seconds = median_seconds(_event_run(torch, fn), budget_s=min(1.0, budget.share(3)))
            out[key] = host_size / seconds / 1e9
        torch.cuda.synchronize(index)
    return out


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
