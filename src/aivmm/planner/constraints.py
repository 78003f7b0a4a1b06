"""Constraints and objectives: what the user asks of a placement, validated before any work."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import ConfigError


class Objective(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    ENERGY = "energy"


class PrecisionPolicy(enum.Enum):
    """How far the planner may lower precision: exact fp32 only, also fp16/bf16, also int8."""

    EXACT = "fp32"
    HALF = "fp16"  # allows fp16 and bf16
    INT8 = "int8"  # allows fp16, bf16 and int8

    def allows(self, precision: Precision) -> bool:
        if precision is Precision.FP32:
            return True
        if precision in (Precision.FP16, Precision.BF16):
            return self is not PrecisionPolicy.EXACT
        return self is PrecisionPolicy.INT8

    @classmethod
    def parse(cls, text: str | PrecisionPolicy) -> PrecisionPolicy:
        if isinstance(text, PrecisionPolicy):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"precision policy must be a string such as 'fp16', got {text!r}")
        aliases = {"exact": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "fp16", "half": "fp16",
                   "int8": "int8"}
        key = text.strip().lower()
        if key not in aliases:
            raise ConfigError(f"unknown precision policy {text!r}; expected one of {sorted(aliases)}")
        return cls(aliases[key])


@dataclasses.dataclass(frozen=True)
class HardwareSelector:
    """Matches devices by id, kind or vendor: ``nvidia:0``, ``gpu``, ``amd``, ``intel-npu:0``."""

    text: str

    def matches(self, device: Device) -> bool:
        t = self.text
        return t == device.id or t == device.kind.value or t == device.vendor.value or (
            # "intel-gpu" style prefixes match every device of that prefix
            ":" not in t and device.id.split(":", 1)[0] == t
        )

    @classmethod
    def parse(cls, text: str) -> HardwareSelector:
        if not isinstance(text, str):
            raise ConfigError(f"hardware selector must be a string such as 'gpu' or 'nvidia:0', got {text!r}")
        t = text.strip().lower()
        if not t:
            raise ConfigError("empty hardware selector")
        known = {k.value for k in DeviceKind} | {v.value for v in Vendor}
        if ":" in t:
            prefix, _, idx = t.partition(":")
            if not prefix or not idx.isdigit():
                raise ConfigError(f"bad device id {text!r}: expected 'prefix:index' such as 'nvidia:0'")
        elif t not in known and t not in ("intel-gpu", "intel-npu"):
            raise ConfigError(
                f"unknown hardware selector {text!r}: use a device id (cpu:0, nvidia:0), a kind "
                f"({', '.join(k.value for k in DeviceKind)}) or a vendor ({', '.join(v.value for v in Vendor)})"
            )
        return cls(t)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
          "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """``512MiB``, ``20GiB``, ``1.5GB``, ``1048576`` → bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"negative size {text}")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"bad size {text!r}: expected a number with an optional unit (512MiB, 20GiB, 1.5GB)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(value):
        raise ConfigError(f"bad size {text!r}")
    return int(value)


def _positive(name: str, value: float | None, *, upper: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    if value > upper:
        raise ConfigError(f"{name}={value!r} is absurd (more than {upper:g})")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a placement must satisfy and what it optimises.

    ``max_latency_ms`` applies to ``latency_percentile`` (50 or 99); ``tolerance`` is the largest
    accepted max-abs error against the fp32 reference for any lowered precision.
    """

    max_latency_ms: float | None = None
    latency_percentile: int = 50
    max_memory_bytes: int | None = None
    max_power_w: float | None = None
    max_energy_j: float | None = None  # per inference
    min_throughput: float | None = None  # inferences per second
    prefer: tuple[HardwareSelector, ...] = ()
    exclude: tuple[HardwareSelector, ...] = ()
    precision: PrecisionPolicy = PrecisionPolicy.EXACT
    tolerance: float | None = None
    objective: Objective = Objective.LATENCY
    batch_size: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "max_latency_ms", _positive("max_latency_ms", self.max_latency_ms, upper=3.6e6))
        set_(self, "max_power_w", _positive("max_power_w", self.max_power_w, upper=1e5))
        set_(self, "max_energy_j", _positive("max_energy_j", self.max_energy_j, upper=1e6))
        set_(self, "min_throughput", _positive("min_throughput", self.min_throughput, upper=1e9))
        if self.max_memory_bytes is not None:
            set_(self, "max_memory_bytes", parse_bytes(self.max_memory_bytes))
            if self.max_memory_bytes == 0:
                raise ConfigError("max_memory_bytes must be positive")
        if self.latency_percentile not in (50, 99):
            raise ConfigError(f"latency_percentile must be 50 or 99, got {self.latency_percentile!r}")
        set_(self, "prefer", tuple(_selectors(self.prefer)))
        set_(self, "exclude", tuple(_selectors(self.exclude)))
        set_(self, "precision", PrecisionPolicy.parse(self.precision))
        set_(self, "objective", _objective(self.objective))
        if self.tolerance is not None:
            _positive("tolerance", self.tolerance, upper=1e6)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or not (
            1 <= self.batch_size <= 1 << 20
        ):
            raise ConfigError(f"batch_size must be an integer in [1, 2^20], got {self.batch_size!r}")
        overlap = {s.text for s in self.prefer} & {s.text for s in self.exclude}
        if overlap:
            raise ConfigError(f"hardware both preferred and excluded: {sorted(overlap)}")

    def allows_device(self, device: Device) -> bool:
        return not any(s.matches(device) for s in self.exclude)

    def preference_rank(self, device: Device) -> int:
        """0 for the first preferred selector that matches, len(prefer) when none does."""
        for i, s in enumerate(self.prefer):
            if s.matches(device):
                return i
        return len(self.prefer)

    def key(self) -> str:
        return repr(sorted(self.to_json().items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "max_latency_ms": self.max_latency_ms,
            "latency_percentile": self.latency_percentile,
            "max_memory_bytes": self.max_memory_bytes,
            "max_power_w": self.max_power_w,
            "max_energy_j": self.max_energy_j,
            "min_throughput": self.min_throughput,
            "prefer": [s.text for s in self.prefer],
            "exclude": [s.text for s in self.exclude],
            "precision": self.precision.value,
            "tolerance": self.tolerance,
            "objective": self.objective.value,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Constraints:
        """From a dict (per-model config, JSON); unknown keys are an error that names them."""
        if not data:
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"unknown constraint(s) {unknown}; known: {sorted(fields)}")
        return cls(**dict(data))


def coerce_constraints(value: Constraints | Mapping[str, Any] | None) -> Constraints:
    """``None`` → no constraints; a mapping → :meth:`Constraints.from_mapping`; anything else refused."""
    if value is None:
        return Constraints()
    if isinstance(value, Constraints):
        return value
    if isinstance(value, Mapping):
        return Constraints.from_mapping(value)
    raise ConfigError(f"constraints must be aivmm.Constraints or a mapping, got {type(value).__name__}")


def _selectors(values: Iterable[str | HardwareSelector] | str | None) -> list[HardwareSelector]:
    if values is None:  # "prefer": null in a config file means no preference
        return []
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not isinstance(values, Iterable) or isinstance(values, bytes | Mapping):
        raise ConfigError(f"expected a list of hardware selectors or a comma-separated string, got {values!r}")
    return [v if isinstance(v, HardwareSelector) else HardwareSelector.parse(v) for v in values]


def _objective(value: str | Objective) -> Objective:
    if isinstance(value, Objective):
        return value
    try:
        return Objective(str(value).lower())
    except ValueError:
        raise ConfigError(
            f"unknown objective {value!r}; expected one of {[o.value for o in Objective]}"
        ) from None
