"""Device values: what discovery returns and every layer above consumes.

A :class:`Device` is immutable and serialises to the JSON schema that ``aivmm devices --json``
prints and that ``AIVMM_SIMULATE`` files use, so simulated and real devices are the same values.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aivmm.errors import SimulationSpecError


class DeviceKind(enum.Enum):
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"


class Vendor(enum.Enum):
    NVIDIA = "nvidia"
    AMD = "amd"
    INTEL = "intel"
    ARM = "arm"
    APPLE = "apple"
    OTHER = "other"

    @classmethod
    def parse(cls, text: str) -> Vendor:
        try:
            return cls(text.strip().lower())
        except ValueError:
            return cls.OTHER


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclasses.dataclass(frozen=True)
class Device:
    """One compute device.

    ``id`` is stable across runs on the same machine (``cpu:0``, ``nvidia:0``, ``amd:0``,
    ``intel-gpu:0``, ``intel-npu:0``); ``runtimes`` names the aivmm backends that can drive it
    (``onnxruntime``, ``openvino``, ``torch``); ``features`` are capability flags (ISA
    extensions, ``fp16``, ``bf16``, ``int8``, ``tensor-cores``, ``mig``); ``properties`` holds the
    vendor-specific facts (PCI bus, UUID, compute capability, power limit, gfx architecture,
    NUMA nodes) as plain JSON values.
    """

    id: str
    kind: DeviceKind
    vendor: Vendor
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    index: int = 0
    features: frozenset[str] = frozenset()
    runtimes: tuple[str, ...] = ()
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    simulated: bool = False
    source: str = ""  # which probe found it: "cpu", "nvml", "amdsmi", "sysfs", "openvino", "simulated"

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", frozenset(self.features))
        object.__setattr__(self, "runtimes", tuple(self.runtimes))
        object.__setattr__(self, "properties", _frozen_mapping(self.properties))

    def __hash__(self) -> int:  # properties is a mapping proxy; the id is the identity
        return hash((self.id, self.simulated))

    @property
    def discrete(self) -> bool:
        """True when the device has memory of its own behind a bus (host-to-device copies)."""
        if self.kind is DeviceKind.CPU:
            return False
        return not bool(self.properties.get("integrated", False))

    def with_(self, **changes: Any) -> Device:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "vendor": self.vendor.value,
            "name": self.name,
            "index": self.index,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_free_bytes": self.memory_free_bytes,
            "features": sorted(self.features),
            "runtimes": list(self.runtimes),
            "properties": dict(self.properties),
            "simulated": self.simulated,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str = "<json>") -> Device:
        """Build a Device from the JSON schema; errors name the source and the field."""
        if not isinstance(data, Mapping):
            raise SimulationSpecError(source, "<device>", f"expected an object, got {type(data).__name__}")
        label = str(data.get("id", "<device>"))

        def need(field: str, typ: type | tuple[type, ...]) -> Any:
            if field not in data:
                raise SimulationSpecError(source, f"{label}.{field}", "missing")
            value = data[field]
            if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
                raise SimulationSpecError(
                    source, f"{label}.{field}", f"expected {getattr(typ, '__name__', typ)}, got {value!r}"
                )
            return value

        dev_id = need("id", str)
        if ":" not in dev_id:
            raise SimulationSpecError(source, f"{label}.id", f"expected 'prefix:index', got {dev_id!r}")
        kind_text = need("kind", str)
        try:
            kind = DeviceKind(kind_text)
        except ValueError:
            raise SimulationSpecError(
                source, f"{label}.kind", f"expected one of {[k.value for k in DeviceKind]}, got {kind_text!r}"
            ) from None
        total = need("memory_total_bytes", int)
        free = data.get("memory_free_bytes", total)
        if not isinstance(free, int) or isinstance(free, bool):
            raise SimulationSpecError(source, f"{label}.memory_free_bytes", f"expected int, got {free!r}")
        if total < 0 or free < 0 or free > total:
            raise SimulationSpecError(
                source, f"{label}.memory_free_bytes", f"need 0 <= free ({free}) <= total ({total})"
            )
        features = data.get("features", [])
        runtimes = data.get("runtimes", [])
        properties = data.get("properties", {})
        for field, value, typ in (
            ("features", features, list),
            ("runtimes", runtimes, list),
            ("properties", properties, Mapping),
        ):
            if not isinstance(value, typ):
                raise SimulationSpecError(source, f"{label}.{field}", f"expected {typ.__name__}, got {value!r}")
        index = data.get("index", _index_of(dev_id))
        return cls(
            id=dev_id,
            kind=kind,
            vendor=Vendor.parse(str(data.get("vendor", "other"))),
            name=str(data.get("name", dev_id)),
            memory_total_bytes=total,
            memory_free_bytes=free,
            index=int(index),
            features=frozenset(str(f) for f in features),
            runtimes=tuple(str(r) for r in runtimes),
            properties=dict(properties),
            simulated=bool(data.get("simulated", True)),
            source=str(data.get("source", "simulated")),
        )


def _index_of(dev_id: str) -> int:
    tail = dev_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What one probe found: its devices, or why it found none."""

    probe: str
    devices: tuple[Device, ...] = ()
    reason: str = ""  # why nothing (or not everything) was found; empty when all went well
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "devices": [d.id for d in self.devices],
            "reason": self.reason,
            "seconds": round(self.seconds, 4),
        }
