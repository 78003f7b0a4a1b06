"""Constraints and objectives: what the user asks of a placement, validated before any work."""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aivmm.devices import Device, DeviceKind, Vendor
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
        aliases = {"exact": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "fp16", "half": "fp16", "int8": "int8"}
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
        return (
            t == device.id
            or t == device.kind.value
            or t == device.vendor.value
            or (
                # "intel-gpu" style prefixes match every device of that prefix
                ":" not in t and device.id.split(":", 1)[0] == t
            )
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
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


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


# -- the table --------------------------------------------------------------------------------
# Every constraint is one row below. The API (Constraints and every mapping it is built from: JSON,
# a serve repository's config, a cluster message), the CLI flags (cli/_constraint_flags.py) and the
# planner's checks against plan figures all read these rows; adding a constraint is adding a row.


class Bound(enum.Enum):
    """How a limit compares with its plan figure."""

    MAX = "<="  # the figure must be at most the value
    MIN = ">="  # the figure must be at least the value

    def violated(self, figure: float, limit: float) -> bool:
        return figure > limit if self is Bound.MAX else figure < limit

    @property
    def broken(self) -> str:
        """The comparison a violating figure makes with its limit, for messages."""
        return ">" if self is Bound.MAX else "<"


@dataclasses.dataclass(frozen=True)
class Limit:
    """A constraint checked against a plan figure (``latency``, ``throughput``, ``memory``,
    ``power``, ``energy``: what the planner measured or predicted for a candidate)."""

    figure: str
    bound: Bound
    show: Callable[[float], str]  # a figure (or the limit) in the row's unit, for messages


@dataclasses.dataclass(frozen=True)
class ConstraintRow:
    """One constraint: its name (keyword, JSON key), unit, type, default, check, CLI flag and help."""

    name: str
    unit: str
    type: str  # in words, for help
    default: Any
    parse: Callable[[str, Any], Any]  # (name, value) -> the normalised value, or ConfigError naming it
    flag: str
    help: str
    metavar: str
    limit: Limit | None = None  # checked against a plan figure
    steers: str = ""  # what the planner does with it, for a row that is not a limit
    dump: Callable[[Any], Any] = lambda v: v  # the normalised value as plain data (JSON)
    repeat: bool = False  # a list: the flag may be repeated, values comma-separated

    @property
    def how_checked(self) -> str:
        if self.limit is None:
            return self.steers
        return f"each candidate's {self.limit.figure} (measured, else predicted) {self.limit.bound.value} {self.name}"


def _number(upper: float) -> Callable[[str, Any], float | None]:
    return functools.partial(_positive, upper=upper)


def _size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    n = parse_bytes(value)
    if n == 0:
        raise ConfigError(f"{name} must be positive")
    return n


def _percentile(name: str, value: Any) -> int:
    if isinstance(value, bool) or value not in (50, 99):
        raise ConfigError(f"{name} must be 50 or 99, got {value!r}")
    return int(value)


def _batch(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise ConfigError(f"{name} must be an integer in [1, 2^20], got {value!r}")
    return value


def _hardware(name: str, value: Any) -> tuple[HardwareSelector, ...]:
    return tuple(_selectors(value))


def _show_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _texts(value: tuple[HardwareSelector, ...]) -> list[str]:
    return [s.text for s in value]


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _limit(name: str, unit: str, upper: float, flag: str, metavar: str, help: str, limit: Limit) -> ConstraintRow:
    """A positive number (at most ``upper``) checked against a plan figure; unset by default."""
    return ConstraintRow(name, unit, "number", None, _number(upper), flag, help, metavar, limit=limit)


def _hardware_list(name: str, flag: str, help: str, steers: str) -> ConstraintRow:
    return ConstraintRow(name, "", "hardware list", (), _hardware, flag, help + " (repeatable or comma-separated)",
                         "HW", dump=_texts, repeat=True, steers=steers)  # fmt: skip


# fmt: off
CONSTRAINTS: tuple[ConstraintRow, ...] = (
    _limit("max_latency_ms", "ms", 3.6e6, "--max-latency-ms", "MS", "latency limit per request",
           Limit("latency", Bound.MAX, lambda v: f"{v:.3f} ms")),
    ConstraintRow("latency_percentile", "percentile", "50 or 99", 50, _percentile, "--latency-percentile",
                  "percentile --max-latency-ms applies to", "{50,99}",
                  steers="which latency figure max_latency_ms and the latency objective read"),
    ConstraintRow("max_memory_bytes", "bytes", "size", None, _size, "--max-memory",
                  "memory limit for the model (512MiB, 2GiB, bytes)", "SIZE",
                  limit=Limit("memory", Bound.MAX, _show_bytes)),
    _limit("max_power_w", "W", 1e5, "--max-power-w", "W", "average power limit while running",
           Limit("power", Bound.MAX, lambda v: f"{v:.1f} W")),
    _limit("max_energy_j", "J", 1e6, "--max-energy-j", "J", "energy limit per inference",
           Limit("energy", Bound.MAX, lambda v: f"{v:.4g} J")),
    _limit("min_throughput", "1/s", 1e9, "--min-throughput", "N", "inferences per second at least",
           Limit("throughput", Bound.MIN, lambda v: f"{v:.1f}/s")),
    _hardware_list("prefer", "--prefer", "preferred hardware: device id, kind or vendor, in order",
                   steers="feasible candidates on the first matching hardware rank first"),
    _hardware_list("exclude", "--exclude", "hardware never to use",
                   steers="candidates on matching devices are not enumerated"),
    ConstraintRow("precision", "", "precision policy", PrecisionPolicy.EXACT,
                  lambda _, v: PrecisionPolicy.parse(v), "--precision",
                  "lowest precision allowed: fp32 (exact), fp16 (also bf16), int8", "POLICY", dump=_enum_value,
                  steers="candidates at precisions below the policy are not enumerated"),
    ConstraintRow("tolerance", "max abs error", "number", None, _number(1e6), "--tolerance",
                  "largest max-abs error against the fp32 reference for a lowered precision", "ABS",
                  steers="a lowered precision whose max-abs error against fp32 exceeds it is rejected"),
    ConstraintRow("objective", "", "latency, throughput or energy", Objective.LATENCY,
                  lambda _, v: _objective(v), "--objective", "what to optimise among the feasible candidates",
                  "{latency,throughput,energy}", dump=_enum_value,
                  steers="the figure feasible candidates are ranked by"),
    ConstraintRow("batch_size", "rows", "integer", 1, _batch, "--batch-size", "batch size to plan for", "N",
                  steers="the batch candidates are predicted and measured at"),
)
# fmt: on


def constraint_table() -> tuple[ConstraintRow, ...]:
    """The rows, read at call time (so that every reader sees the same table)."""
    return CONSTRAINTS


def constraint_row(name: str) -> ConstraintRow:
    for row in constraint_table():
        if row.name == name:
            return row
    raise ConfigError(f"unknown constraint {name!r}; known: {sorted(r.name for r in constraint_table())}")


class Constraints:
    """What a placement must satisfy and what it optimises: one value per row of the table above.

    ``max_latency_ms`` applies to ``latency_percentile`` (50 or 99); ``tolerance`` is the largest
    accepted max-abs error against the fp32 reference for any lowered precision. Frozen, compared
    and hashed by value, pickled as its plain data.

    Not a dataclass: its fields are the table's rows, so a new row is accepted here (keyword,
    mapping, attribute) with no other change. The annotations are for readers and the type checker.
    """

    max_latency_ms: float | None
    latency_percentile: int
    max_memory_bytes: int | None
    max_power_w: float | None
    max_energy_j: float | None  # per inference
    min_throughput: float | None  # inferences per second
    prefer: tuple[HardwareSelector, ...]
    exclude: tuple[HardwareSelector, ...]
    precision: PrecisionPolicy
    tolerance: float | None
    objective: Objective
    batch_size: int

    def __init__(self, **values: Any) -> None:
        rows = constraint_table()
        unknown = sorted(set(values) - {r.name for r in rows})
        if unknown:
            raise ConfigError(f"unknown constraint(s) {unknown}; known: {sorted(r.name for r in rows)}")
        for row in rows:
            given = values.get(row.name, row.default)
            object.__setattr__(self, row.name, given if given is row.default else row.parse(row.name, given))
        overlap = {s.text for s in self.prefer} & {s.text for s in self.exclude}
        if overlap:
            raise ConfigError(f"hardware both preferred and excluded: {sorted(overlap)}")

    def values(self) -> dict[str, Any]:
        """Row name -> normalised value, in table order."""
        return {row.name: getattr(self, row.name, row.default) for row in constraint_table()}

    def replace(self, **changes: Any) -> Constraints:
        return Constraints(**{**self.values(), **changes})

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: Constraints are frozen")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}: Constraints are frozen")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraints) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(tuple(self.values().items()))

    def __repr__(self) -> str:
        rows = constraint_table()
        set_ = ", ".join(f"{r.name}={getattr(self, r.name)!r}" for r in rows if getattr(self, r.name) != r.default)
        return f"Constraints({set_})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Constraints.from_mapping, (self.to_json(),))

    def allows_device(self, device: Device) -> bool:
        return not any(s.matches(device) for s in self.exclude)

    def preference_rank(self, device: Device) -> int:
        """0 for the first preferred selector that matches, len(prefer) when none does."""
        for i, s in enumerate(self.prefer):
            if s.matches(device):
                return i
        return len(self.prefer)

    def limits(self) -> list[tuple[str, Limit, float]]:
        """The limits set here, in table order: (constraint name, how it is checked, value)."""
        out = []
        for row in constraint_table():
            value = getattr(self, row.name)
            if row.limit is not None and value is not None:
                out.append((row.name, row.limit, float(value)))
        return out

    def key(self) -> str:
        return repr(sorted(self.to_json().items()))

    def to_json(self) -> dict[str, Any]:
        return {row.name: row.dump(getattr(self, row.name)) for row in constraint_table()}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Constraints:
        """From a dict (per-model config, JSON); unknown keys are an error that names them."""
        if not data:
            return cls()
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
        raise ConfigError(f"unknown objective {value!r}; expected one of {[o.value for o in Objective]}") from None
