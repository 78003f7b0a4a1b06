"""Device capability figures for the cost model: measured ones when the devices package has them,
documented defaults otherwise.

``aivmm.devices.bench.figures(device, runtime)`` is the measured source (matmul TFLOP/s per
precision, memory bandwidth, host-to-device bandwidth). Its result is read through the JSON view
so this module does not depend on that dataclass's exact field names. When no figure is
available the defaults below are used and ``Capability.source`` says so; a device's
``properties`` may also carry ``tflops_fp32`` / ``memory_bandwidth_gbs`` / ``h2d_bandwidth_gbs``
/ ``power_limit_w`` (simulated devices do), which win over the defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from aivmm.devices import Device, DeviceKind
from aivmm.dtypes import Precision

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Capability:
    tflops: Mapping[Precision, float]  # dense matmul throughput the runtime reaches
    bandwidth_gbs: float  # device memory bandwidth
    h2d_gbs: float | None  # host-to-device bandwidth for discrete devices
    power_w: float | None  # board power limit / TDP, an upper bound for energy estimates
    source: str  # "measured", "properties" or "default"


# Defaults: deliberately modest figures so an unmeasured device is not preferred over a measured one
# by accident. CPU: per physical core, AVX2-class FMA throughput as ORT reaches it on matmuls.
_CPU_GFLOPS_PER_CORE = 40.0
_CPU_BANDWIDTH_GBS = 15.0
_DEFAULTS: Mapping[DeviceKind, tuple[float, float, float | None]] = {
    # kind: (fp32 TFLOP/s, memory GB/s, host-to-device GB/s)
    DeviceKind.GPU: (15.0, 400.0, 12.0),
    DeviceKind.NPU: (2.0, 50.0, 8.0),
}
# Speed of a precision relative to fp32 when the figure for it is not measured.
_GPU_RATIO = {Precision.FP32: 1.0, Precision.FP16: 4.0, Precision.BF16: 4.0, Precision.INT8: 8.0}


def physical_cores() -> int:
    """Physical cores of this host (logical count / SMT when psutil is missing)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def _cpu_ratio(device: Device, precision: Precision) -> float:
    f = {x.lower() for x in device.features}
    if precision is Precision.FP32:
        return 1.0
    if precision is Precision.BF16:
        return 2.0 if f & {"bf16", "avx512_bf16", "amx_bf16", "amx"} else 0.5
    if precision is Precision.FP16:
        return 2.0 if f & {"fp16", "avx512_fp16", "amx_fp16"} else 0.4
    return 2.5 if f & {"vnni", "avx512_vnni", "avx_vnni", "amx_int8", "int8", "i8mm"} else 1.3


def _measured(device: Device, backend: str) -> Mapping[str, Any] | None:
    try:
        from aivmm.devices import bench
    except ImportError:
        return None
    try:
        fig = bench.figures(device, backend)
    except Exception as exc:  # the figures are an input to a heuristic: their absence is not an error
        log.debug("no device figures for %s/%s: %s", device.id, backend, exc)
        return None
    if fig is None:
        return None
    if hasattr(fig, "to_json"):
        return dict(fig.to_json())
    if dataclasses.is_dataclass(fig):
        return dataclasses.asdict(fig)
    return dict(fig) if isinstance(fig, Mapping) else None


def _tflops_from(data: Mapping[str, Any]) -> dict[Precision, float]:
    out: dict[Precision, float] = {}
    for key, value in data.items():
        k = key.lower()
        if isinstance(value, Mapping) and ("tflops" in k or "matmul" in k):
            for pk, pv in value.items():
                try:
                    if isinstance(pv, int | float) and pv > 0:
                        out[Precision.parse(str(pk))] = float(pv) * (1e-3 if "gflops" in k else 1.0)
                except Exception:  # a precision name this planner does not know
                    continue
        elif isinstance(value, int | float) and value > 0 and "flops" in k:
            for p in Precision:
                if p.value in k:
                    out[p] = float(value) * (1e-3 if "gflops" in k else 1.0)
    return out


def _bandwidth_from(data: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(device memory GB/s, host-to-device GB/s): keys naming a bandwidth (``*_gbps``, ``*bandwidth*``)."""
    mem = h2d = None
    for key, value in data.items():
        k = key.lower()
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            continue
        if not ("bandwidth" in k or k.endswith(("_gbps", "_gbs"))) or "d2h" in k:
            continue
        gbs = float(value) / 1e9 if "bytes" in k else float(value)
        if "h2d" in k or "host" in k:
            if h2d is None or "pinned" in k:  # pinned is what a serving runtime's staging buffers get
                h2d = gbs
        else:
            mem = gbs
    return mem, h2d


def capability(device: Device, backend: str) -> Capability:
    props = device.properties
    if device.kind is DeviceKind.CPU:
        fp32 = _CPU_GFLOPS_PER_CORE * physical_cores() / 1e3
        bw, h2d = _CPU_BANDWIDTH_GBS, None
    else:
        fp32, bw, h2d = _DEFAULTS.get(device.kind, _DEFAULTS[DeviceKind.GPU])
    source = "default"
    tflops: dict[Precision, float] = {}
    if "tflops_fp32" in props or "memory_bandwidth_gbs" in props:
        source = "properties"
        fp32 = float(props.get("tflops_fp32", fp32))
        bw = float(props.get("memory_bandwidth_gbs", bw))
        h2d = float(props["h2d_bandwidth_gbs"]) if "h2d_bandwidth_gbs" in props else h2d
        tflops.update({p: float(props[f"tflops_{p.value}"]) for p in Precision if f"tflops_{p.value}" in props})
    measured = _measured(device, backend)
    if measured:
        got = _tflops_from(measured)
        mem, m_h2d = _bandwidth_from(measured)
        if got or mem:
            source = "measured"
            tflops.update(got)
            fp32 = tflops.get(Precision.FP32, fp32)
            bw = mem or bw
            h2d = m_h2d or h2d
    for p in Precision:
        if p not in tflops:
            ratio = _cpu_ratio(device, p) if device.kind is DeviceKind.CPU else _GPU_RATIO[p]
            tflops[p] = fp32 * ratio
    power = props.get("power_limit_w") or props.get("tdp_w")
    return Capability(
        tflops, bw, h2d if device.discrete else None, float(power) if isinstance(power, int | float) else None, source
    )
