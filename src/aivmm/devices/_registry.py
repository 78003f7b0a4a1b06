"""The probe registry: a lazy table from probe name to ``"module:function"`` plus the
``aivmm.probes`` entry-point group. A probe module is imported only when discovery runs it.

A probe is a callable taking no arguments and returning a :class:`ProbeReport`; it never raises
(discovery still guards it) and answers "absent: <why>" when it finds nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from aivmm.devices._types import ProbeReport
from aivmm.errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "aivmm.probes"
Probe = Callable[[], ProbeReport]

_BUILTIN: dict[str, str] = {
    "cpu": "aivmm.devices._cpu:probe",
    "nvidia": "aivmm.devices._nvidia:probe",
    "amd": "aivmm.devices._amd:probe",
    "intel": "aivmm.devices._intel:probe",
}

_lock = threading.Lock()
_table: dict[str, str | Probe] | None = None


@dataclasses.dataclass(frozen=True)
class ProbeEntry:
    name: str
    target: str  # "module:function" (or the qualified name of a callable registered at run time)
    builtin: bool


def _load_table() -> dict[str, str | Probe]:
    global _table
    with _lock:
        if _table is None:
            table: dict[str, str | Probe] = dict(_BUILTIN)
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in table:
                    log.warning("ignoring probe entry point %s=%s: name already registered", ep.name, ep.value)
                    continue
                table[ep.name] = ep.value
            _table = table
        return _table


def register(name: str, target: str | Probe) -> None:
    """Add a probe by ``"module:function"`` or callable. Duplicate names are refused."""
    table = _load_table()
    with _lock:
        if name in table or name == "simulated":
            raise ConfigError(f"probe {name!r} is already registered")
        table[name] = target


def unregister(name: str) -> None:
    table = _load_table()
    with _lock:
        if name in _BUILTIN:
            raise ConfigError(f"cannot unregister built-in probe {name!r}")
        table.pop(name, None)


def names() -> list[str]:
    return list(_load_table())


def entries() -> list[ProbeEntry]:
    out = []
    for name, target in _load_table().items():
        label = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
        out.append(ProbeEntry(name, label, name in _BUILTIN))
    return out


def resolve(name: str) -> Probe:
    """The probe callable; raises ConfigError for an unknown name, ImportError if it cannot load."""
    table = _load_table()
    if name not in table:
        raise ConfigError(f"unknown probe {name!r}; known: {', '.join(table)}")
    target = table[name]
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ConfigError(f"probe {name!r} ({target}) is not callable")
    return fn
