"""Per-device capacity: a configured budget, or measured free memory minus a reserve."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from aivmm.devices import Device
from aivmm.errors import ConfigError
from aivmm.planner.constraints import parse_bytes

BUDGET_ENV = "AIVMM_MEMORY_BUDGET"


def parse_budget_spec(text: str, *, source: str = BUDGET_ENV) -> dict[str, int]:
    """``"cpu:0=512MiB,nvidia:0=20GiB"`` -> ``{"cpu:0": 536870912, "nvidia:0": 21474836480}``."""
    out: dict[str, int] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        dev, sep, size = item.partition("=")
        dev = dev.strip()
        if not sep or ":" not in dev or not size.strip():
            raise ConfigError(f"{source}: bad entry {item!r}: expected 'device:index=size' such as 'cpu:0=512MiB'")
        if dev in out:
            raise ConfigError(f"{source}: device {dev!r} is given twice")
        try:
            out[dev] = parse_bytes(size.strip())
        except ConfigError as exc:
            raise ConfigError(f"{source}: {dev}: {exc}") from None
    return out


def resolve_capacities(
    devices: Sequence[Device],
    budgets: Mapping[str, int | str] | None = None,
    *,
    reserve_fraction: float = 0.1,
    environ: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """The byte capacity of each device the ledger may hand out.

    An explicit budget (argument first, then the environment) wins; otherwise the device's measured
    free memory minus ``reserve_fraction`` of it, which leaves room for runtime workspaces and
    allocator fragmentation that no footprint estimate sees.
    """
    if (
        isinstance(reserve_fraction, bool)
        or not isinstance(reserve_fraction, int | float)
        or not (0.0 <= reserve_fraction < 1.0)
    ):
        raise ConfigError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
    env = os.environ if environ is None else environ
    configured: dict[str, int] = {}
    if env.get(BUDGET_ENV, "").strip():
        configured.update(parse_budget_spec(env[BUDGET_ENV]))
    for dev_id, size in (budgets or {}).items():
        try:
            configured[dev_id] = parse_bytes(size)
        except ConfigError as exc:
            raise ConfigError(f"memory budget for {dev_id}: {exc}") from None
    known = {d.id for d in devices}
    unknown = sorted(set(configured) - known)
    if unknown:
        raise ConfigError(f"memory budget names unknown device(s) {unknown}; devices: {sorted(known)}")
    out: dict[str, int] = {}
    for dev in devices:
        if dev.id in configured:
            out[dev.id] = configured[dev.id]
        else:
            out[dev.id] = int(dev.memory_free_bytes * (1.0 - reserve_fraction))
    return out
