"""Simulated devices: devices described in the JSON that ``aivmm devices --json`` prints.

The spec comes from the ``simulate=`` argument (a path, or a list of dicts) or from the
``AIVMM_SIMULATE`` environment variable (a path). Unlike a hardware probe, this reads user input,
so a malformed spec raises :class:`~aivmm.errors.SimulationSpecError` naming the file and field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aivmm.devices._types import Device
from aivmm.errors import ConfigError, SimulationSpecError

ENV_VAR = "AIVMM_SIMULATE"
SimulateSpec = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | None


def spec_from_env() -> str | None:
    value = os.environ.get(ENV_VAR, "").strip()
    return value or None


def load(spec: SimulateSpec) -> tuple[Device, ...]:
    """The devices of a spec; raises SimulationSpecError naming the source and the field."""
    if spec is None:
        return ()
    if isinstance(spec, str | os.PathLike):
        source = os.fspath(spec)
        data = _read(Path(source))
    elif isinstance(spec, Sequence) and not isinstance(spec, bytes):
        source, data = "<simulate argument>", list(spec)
    else:
        raise SimulationSpecError("<simulate argument>", "<spec>", f"expected a path or a list of dicts, got {spec!r}")
    if isinstance(data, Mapping) and "devices" in data:
        data = data["devices"]  # also accept {"devices": [...]}, the shape a hand-written spec often takes
    if not isinstance(data, list):
        raise SimulationSpecError(source, "<top level>", f"expected a list of devices, got {type(data).__name__}")
    devices: list[Device] = []
    seen: dict[str, int] = {}
    for position, entry in enumerate(data):
        device = Device.from_json(entry, source=f"{source}[{position}]")
        if device.id in seen:
            raise SimulationSpecError(
                f"{source}[{position}]", f"{device.id}.id", f"duplicates the device at position {seen[device.id]}"
            )
        seen[device.id] = position
        device = device.with_(simulated=True, source="simulated")
        figures = entry.get("figures")
        if figures is not None:
            # The "figures" of an `aivmm devices --json --bench` entry travel with the device, so a
            # recorded machine can be replayed with its measured speed (see aivmm.devices.bench).
            if not isinstance(figures, Mapping):
                raise SimulationSpecError(f"{source}[{position}]", f"{device.id}.figures", "expected an object")
            _check_figures(figures, device.id, f"{source}[{position}]")
            device = device.with_(properties={**device.properties, "figures": dict(figures)})
        devices.append(device)
    return tuple(devices)


def _check_figures(figures: Mapping[str, Any], device_id: str, source: str) -> None:
    from aivmm.devices.bench import DeviceFigures  # stdlib-only module: cheap

    try:
        DeviceFigures.from_json({"device_id": device_id, "runtime": "simulated", **figures}, source=source)
    except ConfigError as exc:
        raise SimulationSpecError(source, f"{device_id}.figures", str(exc).split(": ", 1)[-1]) from exc


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimulationSpecError(str(path), "<file>", f"cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SimulationSpecError(
            str(path), "<json>", f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
